use clap::Parser;
use nextflow::cli::{bench, devices, Cli, Command};
use nextflow_runtime::{discover, Device};
use std::process::ExitCode;

fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    let stats = cli.stats;
    match cli.command {
        Command::Devices => {
            // Open an explicit choice first, so a bad one fails with its reason alone.
            let chosen = match cli.device.as_str() {
                "auto" => None,
                spec => Some(Device::open(spec)?),
            };
            print!("{}", devices::render(discover()));
            if let Some(device) = chosen {
                println!("\n--device {} opens {device}", cli.device);
            }
        }
        Command::Bench(args) => bench::run(&args, &Device::open(&cli.device)?)?,
    }
    if stats {
        eprintln!("stats: {}", nextflow::compiler::counters());
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
