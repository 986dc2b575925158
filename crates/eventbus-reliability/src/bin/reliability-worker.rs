//! A consumer process for the crash scenario; see `eventbus_reliability::scenarios::worker_main`.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match eventbus_reliability::scenarios::worker_main().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("reliability-worker: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
