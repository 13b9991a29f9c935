use clap::Parser;
use nextflow::cli::{bench, devices, run, serve, Cli, Command, EvalCommand};
use nextflow_runtime::{discover, Device};
use std::process::ExitCode;

fn main_impl(cli: &Cli) -> run::Result<()> {
    match &cli.command {
        Command::Devices(args) => {
            // Open an explicit choice first, so a bad one fails with its reason alone.
            let chosen = match cli.device.as_str() {
                "auto" => None,
                spec => Some(Device::open(spec)?),
            };
            if args.json {
                println!("{}", serde_json::to_string_pretty(&devices::report(discover()))?);
                return Ok(());
            }
            print!("{}", devices::render(discover()));
            if let Some(device) = chosen {
                println!("\n--device {} opens {device}", cli.device);
            }
            Ok(())
        }
        Command::Completions(args) => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(args.shell, &mut cmd, "nextflow", &mut std::io::stdout());
            Ok(())
        }
        Command::Bench(args) => bench::run(args, &run::open_device(&cli.device)?),
        Command::Inspect(args) => run::inspect(args),
        Command::Convert(args) => run::convert(args),
        Command::Generate(args) => run::generate(args, &run::open_device(&cli.device)?),
        Command::Understand(args) => run::understand(args, &run::open_device(&cli.device)?),
        Command::Edit(args) => run::edit(args, &run::open_device(&cli.device)?),
        Command::Chat(args) => run::chat(args, &run::open_device(&cli.device)?),
        Command::Serve(args) => serve::serve(args, &run::open_device(&cli.device)?),
        Command::Eval(EvalCommand::Shapes(args)) => run::eval_shapes(args, &run::open_device(&cli.device)?),
    }
}

/// glibc returns every freed block above 128 KiB to the kernel (mmap/munmap, heap trim), so
/// each op's fresh output buffer is zero-filled by page faults again: 43 k faults and a
/// third of the decoder's time over 22 tiny-model images, measured with `perf stat`. Keep
/// freed memory for reuse instead (blocks of 256 MiB and more, e.g. weights, still map).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

fn main() -> ExitCode {
    nextflow::cli::files::install_signal_cleanup();
    tune_allocator();
    let cli = Cli::parse();
    nextflow::cli::ui::set_quiet(cli.quiet);
    nextflow::compiler::measure_memory(cli.stats);
    let result = run::preflight(&cli).and_then(|()| main_impl(&cli));
    if cli.stats {
        eprintln!("stats: {}", nextflow::compiler::counters());
        eprintln!("stats: {}", nextflow::compiler::autotune::usage());
        eprintln!(
            "stats: {} GPU kernel launches, {} of them outside compiled plans",
            nextflow::ops::gpu_launches(),
            nextflow::ops::gpu_launches_outside_plans()
        );
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
