//! Notify scripts, run on every state transition with keepalived's arguments:
//! `notify_master`/`notify_backup`/`notify_fault`/`notify_stop` as configured,
//! and `notify` with `INSTANCE <name> <MASTER|BACKUP|FAULT|STOP> <priority>`
//! appended. Scripts run without a shell and are not waited for, so a slow
//! script never delays an advert.

use crate::config::{split_command, Notify};
use crate::instance::State;

/// The command lines to run when instance `name` enters `to`.
pub fn commands(notify: &Notify, name: &str, to: State, priority: u8) -> Vec<Vec<String>> {
    let specific = match to {
        State::Master => &notify.master,
        State::Backup => &notify.backup,
        State::Fault => &notify.fault,
        State::Initialize => &notify.stop,
    };
    let mut out = Vec::new();
    if let Some(cmd) = specific {
        out.push(split_command(cmd));
    }
    if let Some(cmd) = &notify.any {
        let mut argv = split_command(cmd);
        argv.extend([
            "INSTANCE".to_owned(),
            name.to_owned(),
            to.keepalived_name().to_owned(),
            priority.to_string(),
        ]);
        out.push(argv);
    }
    out.retain(|argv| !argv.is_empty());
    out
}

/// Starts the notify scripts for a transition and reaps them in the background.
pub fn run(notify: &Notify, name: &str, to: State, priority: u8) {
    for argv in commands(notify, name, to, priority) {
        match tokio::process::Command::new(&argv[0])
            .args(&argv[1..])
            .spawn()
        {
            Ok(mut child) => {
                tokio::spawn(async move {
                    let _ = child.wait().await;
                });
            }
            Err(e) => {
                tracing::warn!(instance = name, command = %argv.join(" "), "notify script failed to start: {e}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_are_keepalived_s() {
        let n = Notify {
            master: Some("/etc/m.sh up".into()),
            stop: Some("/etc/s.sh".into()),
            any: Some("/etc/n.sh".into()),
            ..Notify::default()
        };
        assert_eq!(
            commands(&n, "VI_1", State::Master, 120),
            [
                vec!["/etc/m.sh", "up"],
                vec!["/etc/n.sh", "INSTANCE", "VI_1", "MASTER", "120"]
            ]
        );
        assert_eq!(
            commands(&n, "VI_1", State::Initialize, 100),
            [
                vec!["/etc/s.sh"],
                vec!["/etc/n.sh", "INSTANCE", "VI_1", "STOP", "100"]
            ]
        );
        assert_eq!(commands(&n, "VI_1", State::Fault, 100).len(), 1);
        assert!(commands(&Notify::default(), "VI_1", State::Backup, 100).is_empty());
    }
}
