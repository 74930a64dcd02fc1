//! The standalone proxy's and VRRP's configuration files through the binary:
//! `keepcached proxy --config F --print-config` prints the effective configuration and exits,
//! binding nothing; a file that cannot be used makes `keepcached proxy` and `keepcached vrrp`
//! exit 64 with a message naming the file or key, before anything is bound
//! (docs/proxy-config.md, docs/vrrp.md). Each case holds the port the process would bind, so a
//! bind attempted before the check would fail differently.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use keepcached_testkit::process::{run_with_timeout, CommandOutput};

const BIN: &str = env!("CARGO_BIN_EXE_keepcached");
const WAIT: Duration = Duration::from_secs(20);

/// A scratch directory for one test, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "keepcached-config-exits-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn file(&self, name: &str, text: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_str().unwrap().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run(args: &[&str]) -> CommandOutput {
    let out = run_with_timeout(Command::new(BIN).args(args), WAIT).unwrap();
    assert!(out.status.is_some(), "{args:?} did not exit: {out:?}");
    out
}

/// A loopback port held by this test for as long as the listener lives.
fn held_port() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    (listener, addr)
}

#[test]
fn proxy_print_config_prints_every_default_with_the_flags_over_the_file_and_exits() {
    let scratch = Scratch::new("print");
    let (_held, listen) = held_port();
    let file = scratch.file(
        "proxy.toml",
        &format!(
            "listen = [\"{listen}\"]\n\n[[pools]]\nname = \"main\"\nservers = [\"127.0.0.1:1\"]\n\n\
             [backend]\nfailure_limit = 3\n"
        ),
    );
    let out = run(&["proxy", "--config", &file, "--print-config"]);
    assert_eq!(out.status.unwrap().code(), Some(0), "{out:?}");
    let printed = &out.stdout;
    for line in [
        format!("listen = [\"{listen}\"]"),
        "failure_limit = 3".to_string(),
        // Defaults the file leaves out.
        "request_timeout_ms = 500".to_string(),
        "missed_keys_limit = 100000".to_string(),
        "hold_returning = false".to_string(),
    ] {
        assert!(
            printed.lines().any(|l| l == line),
            "no {line:?} in:\n{printed}"
        );
    }
    // A flag given with --config overrides the file.
    let out = run(&["proxy", "--config", &file, "-p", "12345", "--print-config"]);
    assert_eq!(out.status.unwrap().code(), Some(0), "{out:?}");
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("listen = [") && l.contains(":12345\"")),
        "{}",
        out.stdout
    );
    // What it prints is a complete file that prints the same again.
    let again = scratch.file("printed.toml", printed);
    let out = run(&["proxy", "--config", &again, "--print-config"]);
    assert_eq!(out.status.unwrap().code(), Some(0), "{out:?}");
    assert_eq!(&out.stdout, printed);
}

#[test]
fn a_proxy_file_that_cannot_be_used_exits_64_naming_the_file_or_key() {
    let scratch = Scratch::new("proxy");
    let (_held, listen) = held_port();
    let pool = "[[pools]]\nname = \"main\"\nservers = [\"127.0.0.1:1\"]\n";
    let cases = [
        (
            "unknown.toml",
            format!("listen = [\"{listen}\"]\n{pool}\n[backend]\nrequest_timeout = 5\n"),
            vec!["unknown.toml", "request_timeout"],
        ),
        (
            "value.toml",
            format!("listen = [\"{listen}\"]\n{pool}\n[backend]\nfailure_limit = \"two\"\n"),
            vec!["value.toml", "failure_limit"],
        ),
        (
            "nopool.toml",
            format!("listen = [\"{listen}\"]\npools = []\n"),
            vec!["pools"],
        ),
        (
            "syntax.toml",
            format!("listen = [\"{listen}\"\n{pool}"),
            vec!["syntax.toml"],
        ),
    ];
    for (name, text, named) in cases {
        let file = scratch.file(name, &text);
        let out = run(&["proxy", "--config", &file]);
        assert_eq!(out.status.unwrap().code(), Some(64), "{name}: {out:?}");
        for word in named {
            assert!(out.stderr.contains(word), "{name}: {word:?} not in {out:?}");
        }
        assert!(
            !out.stderr.to_ascii_lowercase().contains("in use"),
            "{name}: bound before the check: {out:?}"
        );
        // --print-config checks the file as well.
        let out = run(&["proxy", "--config", &file, "--print-config"]);
        assert_eq!(out.status.unwrap().code(), Some(64), "{name}: {out:?}");
        assert!(out.stdout.is_empty(), "{name}: {out:?}");
    }
    let missing = scratch.0.join("missing.toml");
    let out = run(&["proxy", "--config", missing.to_str().unwrap()]);
    assert_eq!(out.status.unwrap().code(), Some(64), "{out:?}");
    assert!(out.stderr.contains("missing.toml"), "{out:?}");
}

#[test]
fn a_vrrp_file_that_cannot_be_used_exits_64_naming_the_file_and_the_key_or_line() {
    let scratch = Scratch::new("vrrp");
    // The metrics endpoint is the first thing the daemon binds.
    let (_held, metrics) = held_port();
    let instance = "[[instance]]\nname = \"VI_1\"\ninterface = \"lo\"\nvrid = 51\n";
    let cases = [
        (
            "unknown.toml",
            format!("{instance}advert_int = 1\nvips = [{{ address = \"198.18.0.100\" }}]\n"),
            vec!["unknown.toml", "advert_int"],
            "--config",
        ),
        (
            "range.toml",
            "[[instance]]\nname = \"VI_1\"\ninterface = \"lo\"\nvrid = 300\n\
             vips = [{ address = \"198.18.0.100\" }]\n"
                .to_string(),
            vec!["range.toml", "vrid"],
            "--config",
        ),
        // docs/vrrp.md: an instance is of one family.
        (
            "family.toml",
            format!(
                "{instance}version = 3\n\
                 vips = [{{ address = \"2001:2::100\" }}, {{ address = \"198.18.0.100\" }}]\n"
            ),
            vec![
                "family.toml",
                "198.18.0.100 is not IPv6, as the instance's first virtual address is",
            ],
            "--config",
        ),
        // docs/vrrp.md: what keepcached does not implement is an error naming its line.
        (
            "keepalived.conf",
            "global_defs {\n  vrrp_strict\n}\nvrrp_instance VI_1 {\n  state MASTER\n  \
             interface lo\n  virtual_router_id 51\n  virtual_ipaddress {\n    198.18.0.100\n  \
             }\n}\n"
                .to_string(),
            vec!["keepalived.conf", "line 2", "vrrp_strict"],
            "--keepalived-conf",
        ),
    ];
    for (name, text, named, flag) in cases {
        let file = scratch.file(name, &text);
        let metrics_flag = format!("--metrics={metrics}");
        let out = run(&["vrrp", flag, &file, &metrics_flag]);
        assert_eq!(out.status.unwrap().code(), Some(64), "{name}: {out:?}");
        for word in named {
            assert!(out.stderr.contains(word), "{name}: {word:?} not in {out:?}");
        }
        assert!(
            !out.stderr.to_ascii_lowercase().contains("in use"),
            "{name}: bound before the check: {out:?}"
        );
    }
}
