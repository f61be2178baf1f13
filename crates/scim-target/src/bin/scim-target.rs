//! `scim-target [--listen 127.0.0.1:0] [--token TOKEN] [--max-results 1000] [--record title]`:
//! the in-memory SCIM service of the benchmarks (see the library's documentation); prints
//! `listening on http://ADDR` on its first line of output.

use provisioner_scim_target::{serve, App, Options};

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("scim-target [--listen 127.0.0.1:0] [--token TOKEN] [--max-results 1000] [--record title]");
        return Ok(());
    }
    let listen = arg(&args, "--listen").unwrap_or_else(|| "127.0.0.1:0".into());
    let defaults = Options::default();
    let app = App::new(Options {
        token: arg(&args, "--token"),
        max_results: arg(&args, "--max-results").and_then(|n| n.parse().ok()).unwrap_or(defaults.max_results),
        record: arg(&args, "--record").unwrap_or(defaults.record),
        ..defaults
    });
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    println!("listening on http://{}", listener.local_addr()?);
    serve(listener, app).await
}
