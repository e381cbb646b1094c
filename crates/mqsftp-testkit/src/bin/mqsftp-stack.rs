//! `mqsftp-stack CMD [ARGS...]`: starts a private Mosquitto + sshd stack exactly as the tests do, issues device
//! `demo-device`, runs CMD with the stack described in environment variables, then stops both servers and exits
//! with CMD's status. `scripts/demo` uses it; `mqsftp-stack bash` gives a shell with a live stack to try the CLI.
//!
//! Environment given to CMD:
//! - `MQSFTP_GATEWAY_CONFIG`: gateway.toml for this stack
//! - `MQSFTP_DEVICE_CONFIG`: device.toml of `demo-device`
//! - `MQSFTP_STORE_DIR`: the SFTP server's directory (device roots are `devices/{device}` under it)
//! - `MQSFTP_DEVICE_ROOT`: `demo-device`'s root on the store
//! - `MQSFTP_PKI_DIR`: the generated CA, certificates, keys and server config files

use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args_os().skip(1);
    let Some(cmd) = args.next() else {
        eprintln!("usage: mqsftp-stack CMD [ARGS...]");
        return ExitCode::from(2);
    };
    let stack = match mqsftp_testkit::Stack::start() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: could not start Mosquitto and sshd: {e}");
            return ExitCode::from(1);
        }
    };
    let device = match stack.device("demo-device") {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: could not issue the demo device: {e}");
            return ExitCode::from(1);
        }
    };
    let root = stack.device_root("demo-device");
    eprintln!(
        "stack: mosquitto on 127.0.0.1:{} (mutual TLS), sshd on 127.0.0.1:{}",
        stack.mqtt_port(),
        stack.sftp_port()
    );
    let status = std::process::Command::new(cmd)
        .args(args)
        .env("MQSFTP_GATEWAY_CONFIG", stack.gateway_config())
        .env("MQSFTP_DEVICE_CONFIG", &device)
        .env("MQSFTP_STORE_DIR", stack.store_dir())
        .env("MQSFTP_DEVICE_ROOT", &root)
        .env("MQSFTP_PKI_DIR", stack.pki_dir())
        .status();
    drop(stack);
    match status {
        Ok(s) => ExitCode::from(s.code().and_then(|c| u8::try_from(c).ok()).unwrap_or(1)),
        Err(e) => {
            eprintln!("error: could not run the command: {e}");
            ExitCode::from(1)
        }
    }
}
