//! Passwords given with `--password-stdin`, and `ctl hash-password`.

use std::io::Read;

use anyhow::{Context, Result, bail};
use myriad_fleet::credentials::{HashParams, hash_password};

use super::args::{ApiCommand, AppsCommand, DevicesCommand, PasswordArgs};

/// Reads a password from `input`: all of it, without the trailing line
/// break. An empty password is an error.
pub fn read_password(mut input: impl Read) -> Result<String> {
    let mut text = String::new();
    input
        .read_to_string(&mut text)
        .context("reading the password from standard input")?;
    let password = text.trim_end_matches(['\n', '\r']);
    if password.is_empty() {
        bail!("the password read from standard input is empty");
    }
    Ok(password.to_string())
}

/// For a command with `--password-stdin`, reads the password from `input`
/// into the command's `password`, so that building the request needs no
/// I/O. Other commands are left alone and `input` is not read.
pub fn fill_from_stdin(command: &mut ApiCommand, input: impl Read) -> Result<()> {
    let slot = match command {
        ApiCommand::Devices(DevicesCommand::Create(create)) => {
            (create.password.password_stdin).then_some(&mut create.password.password)
        }
        ApiCommand::Devices(DevicesCommand::SetPassword(set)) => {
            (set.password.password_stdin).then_some(&mut set.password.password)
        }
        ApiCommand::Apps(AppsCommand::Create(create)) => {
            (create.password.password_stdin).then_some(&mut create.password.password)
        }
        ApiCommand::Apps(AppsCommand::Update(update)) => {
            (update.password.password_stdin).then_some(&mut update.password.password)
        }
        _ => None,
    };
    if let Some(slot) = slot {
        *slot = Some(read_password(input)?);
    }
    Ok(())
}

/// The password of `hash-password`, from the argument or from `input`.
pub fn password_of(args: &PasswordArgs, input: impl Read) -> Result<String> {
    match &args.password {
        Some(password) if !args.password_stdin => Ok(password.clone()),
        _ => read_password(input),
    }
}

/// An Argon2id PHC string of `password` with the server's default costs.
pub fn hash(password: &str) -> Result<String> {
    hash_password(password, &HashParams::default()).context("hashing the password")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ctl::args::{DeviceCreate, IdArg, OptionalPasswordArgs};
    use myriad_fleet::credentials::verify_password;

    #[test]
    fn stdin_password_drops_only_the_line_break() {
        assert_eq!(read_password(&b"s3cret \r\n"[..]).unwrap(), "s3cret ");
        assert_eq!(read_password(&b"two words"[..]).unwrap(), "two words");
        assert!(read_password(&b"\n"[..]).is_err());
    }

    #[test]
    fn stdin_is_read_only_when_asked() {
        let mut command = ApiCommand::Devices(DevicesCommand::Create(DeviceCreate {
            id: "d1".into(),
            name: None,
            attrs: vec![],
            groups: vec![],
            disabled: false,
            password: OptionalPasswordArgs {
                password: None,
                password_stdin: true,
            },
        }));
        fill_from_stdin(&mut command, &b"pw\n"[..]).unwrap();
        let ApiCommand::Devices(DevicesCommand::Create(create)) = &command else {
            panic!("changed command");
        };
        assert_eq!(create.password.password.as_deref(), Some("pw"));

        let mut command = ApiCommand::Devices(DevicesCommand::Get(IdArg { id: "d1".into() }));
        let failing = FailingReader;
        fill_from_stdin(&mut command, failing).unwrap();
    }

    struct FailingReader;
    impl Read for FailingReader {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            panic!("stdin read for a command without --password-stdin")
        }
    }

    #[test]
    fn hash_password_prints_a_verifiable_argon2id_hash() {
        let args = PasswordArgs {
            password: Some("hunter2".into()),
            password_stdin: false,
        };
        let password = password_of(&args, FailingReader).unwrap();
        let phc = hash(&password).unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{phc}");
        assert!(verify_password(&phc, "hunter2").unwrap());
    }
}
