//! The `eventbus` command line, and the same commands inside a service's own binary.
//!
//! The standalone `eventbus` binary knows no event types: it works with raw bytes, JSON, Avro
//! schema files (`--schema x.avsc`) and the schema registry. A service that calls
//! [`App::run`] from its own `main` gets the same subcommands with its event types known (every
//! `#[derive(Event)]` registers itself) and its named consumers runnable by `run --name`:
//!
//! ```no_run
//! use eventbus::{Consumer, Envelope, Event};
//! # #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Event)]
//! # #[event(type = "org.example.order.placed.v1")]
//! # struct OrderPlaced { id: i64 }
//!
//! #[tokio::main]
//! async fn main() -> std::process::ExitCode {
//!     eventbus_cli::App::new("orders-service")
//!         .consumer("billing", &["orders"], "billing", |c: Consumer| {
//!             c.handle(|e: Envelope<OrderPlaced>| async move {
//!                 println!("bill order {}", e.id);
//!                 Ok::<_, std::io::Error>(())
//!             })
//!         })
//!         .run()
//!         .await
//! }
//! ```
//!
//! `orders-service produce orders --type org.example.order.placed.v1 --data '{"id": 1}'`,
//! `orders-service tail orders --from earliest`, `orders-service run --name billing`, and
//! `orders-service asyncapi` then all know `OrderPlaced`. Exit codes: 0 done, 1 failed, 2 wrong
//! command line, 3 a consumer stopped on errors, 130 interrupted.
#![forbid(unsafe_code)]

mod app;
mod args;
pub mod asyncapi;
mod codec;
mod commands;
mod config;
mod error;
mod random;

pub use app::App;
pub use error::CliError;

/// The standalone `eventbus` binary: the commands with no event types of its own.
pub fn main() -> std::process::ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(App::new("eventbus").run()),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
