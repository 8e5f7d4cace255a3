use clap::Parser;

/// mimalloc rather than the system allocator: a message is allocated by the NATS client's
/// task and freed by the agent's (often on another thread), the case glibc's malloc is
/// slowest at; on the request path it was a tenth of the host's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = agent_host::cli::Cli::parse();
    if let Err(e) = agent_host::cli::main(cli) {
        // The error may carry an agent's text (an init error, a wave's failure): no control
        // character of it reaches the terminal raw.
        eprintln!(
            "error: {}",
            agent_host::escape::for_block(&format!("{e:#}"))
        );
        std::process::exit(1);
    }
}
