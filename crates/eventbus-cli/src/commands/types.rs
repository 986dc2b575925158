//! `types`: the event types this program knows.

use std::io::Write;

use eventbus::catalog;

use crate::args::Types;
use crate::error::CliError;

pub(crate) fn run(args: &Types, out: &mut (dyn Write + Send)) -> Result<(), CliError> {
    let types = catalog::event_types();
    if types.is_empty() {
        eprintln!("this program knows no event types; use --schema FILE with --type, or --raw");
    }
    for t in types {
        let key = t
            .key_field()
            .map(|k| format!(" key={k}"))
            .unwrap_or_default();
        writeln!(out, "{} minor={}{key}", t.name(), t.minor_version())?;
        if args.schemas {
            writeln!(out, "{}", t.schema()?.json())?;
        }
    }
    Ok(())
}
