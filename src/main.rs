use clap::Parser;
use nextflow::cli::{bench, devices, run, Cli, Command, EvalCommand};
use nextflow_runtime::{discover, Device};
use std::process::ExitCode;

fn main_impl(cli: &Cli) -> run::Result<()> {
    match &cli.command {
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
            Ok(())
        }
        Command::Bench(args) => bench::run(args, &run::open_device(&cli.device)?),
        Command::Inspect(args) => run::inspect(args),
        Command::Generate(args) => run::generate(args, &run::open_device(&cli.device)?),
        Command::Understand(args) => run::understand(args, &run::open_device(&cli.device)?),
        Command::Edit(args) => run::edit(args, &run::open_device(&cli.device)?),
        Command::Chat(args) => run::chat(args, &run::open_device(&cli.device)?),
        Command::Eval(EvalCommand::Shapes(args)) => run::eval_shapes(args, &run::open_device(&cli.device)?),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = main_impl(&cli);
    if cli.stats {
        eprintln!("stats: {}", nextflow::compiler::counters());
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
