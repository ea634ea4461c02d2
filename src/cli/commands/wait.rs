//! `brig wait`: blocks until sandboxes stop, then prints their exit codes.

use std::time::Duration;

use clap::Args;

use crate::sandbox::state::Status;

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// Sandboxes (names or ids).
    #[arg(required = true)]
    sandboxes: Vec<String>,
}

pub fn run(args: WaitArgs) -> anyhow::Result<i32> {
    let home = super::home()?;
    for name in &args.sandboxes {
        let sb = super::resolve(&home, name)?;
        // Until it has exited (a stopped sandbox that brig cp is reading is live, but done).
        let st = loop {
            let st = sb.current_state()?;
            if st.status == Status::Exited || !sb.is_live() {
                break st;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        println!("{}", st.exit_code.unwrap_or(crate::cli::EXIT_BRIG_ERROR));
    }
    Ok(0)
}
