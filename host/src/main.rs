use clap::Parser;

fn main() {
    let cli = agent_host::cli::Cli::parse();
    if let Err(e) = agent_host::cli::main(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
