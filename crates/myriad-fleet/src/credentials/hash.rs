//! Argon2id password hashes as PHC strings.

use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{Error as PhError, PasswordHasher, PasswordVerifier};
use argon2::{Algorithm, Argon2, Params, Version};

/// Longest password accepted, in bytes. Longer ones never verify.
pub const MAX_PASSWORD_LEN: usize = 1024;

/// Why a password could not be hashed or a PHC string is not usable. The
/// messages never contain the password or the hash.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CredentialError {
    /// The password is too long to hash.
    #[error("password is {len} bytes long, at most {max} allowed")]
    PasswordTooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The string is not a PHC string (`$alg$v=..$params$salt$hash`).
    #[error("not a valid PHC password hash: {0}")]
    Malformed(String),
    /// The PHC string names an algorithm other than Argon2.
    #[error("unsupported password hash algorithm {0:?} (argon2id, argon2i or argon2d expected)")]
    Algorithm(String),
    /// A cost parameter exceeds what the server accepts.
    #[error("password hash parameter {name}={value} exceeds the limit {max}")]
    CostTooHigh {
        /// `m`, `t` or `p`.
        name: &'static str,
        /// The value in the hash.
        value: u32,
        /// The limit.
        max: u32,
    },
    /// The configured or stored Argon2 parameters are invalid.
    #[error("invalid Argon2 parameters: {0}")]
    Params(String),
    /// Hashing itself failed (random source, memory).
    #[error("password hashing failed: {0}")]
    Hash(String),
}

/// Argon2id cost parameters for new hashes. Checks use the parameters
/// stored in each hash, so changing these affects only new passwords.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashParams {
    /// Memory in KiB.
    pub m_cost_kib: u32,
    /// Passes over the memory.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl HashParams {
    /// OWASP's recommendation for Argon2id: 19 MiB, 2 passes, 1 lane.
    pub const OWASP: HashParams = HashParams {
        m_cost_kib: 19_456,
        t_cost: 2,
        p_cost: 1,
    };

    /// Very cheap parameters for tests. Never use them for real passwords.
    pub const INSECURE_FAST: HashParams = HashParams {
        m_cost_kib: 64,
        t_cost: 1,
        p_cost: 1,
    };
}

impl Default for HashParams {
    /// [`HashParams::OWASP`].
    fn default() -> Self {
        HashParams::OWASP
    }
}

/// The largest costs accepted in a PHC string, so that one stored or
/// imported hash cannot make a login take seconds or gigabytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhcLimits {
    /// Largest memory cost, KiB.
    pub max_m_cost_kib: u32,
    /// Largest number of passes.
    pub max_t_cost: u32,
    /// Largest number of lanes.
    pub max_p_cost: u32,
}

impl Default for PhcLimits {
    /// 256 MiB, 16 passes, 8 lanes.
    fn default() -> Self {
        PhcLimits {
            max_m_cost_kib: 256 * 1024,
            max_t_cost: 16,
            max_p_cost: 8,
        }
    }
}

/// Hashes `password` with Argon2id and a random salt into a PHC string.
/// Costs about as much CPU as a check (see [`verify_password`]).
pub fn hash_password(password: &str, params: &HashParams) -> Result<String, CredentialError> {
    if password.len() > MAX_PASSWORD_LEN {
        return Err(CredentialError::PasswordTooLong {
            len: password.len(),
            max: MAX_PASSWORD_LEN,
        });
    }
    let params = Params::new(params.m_cost_kib, params.t_cost, params.p_cost, None)
        .map_err(|e| CredentialError::Params(e.to_string()))?;
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let hash: PasswordHash = argon2
        .hash_password(password.as_bytes())
        .map_err(|e| CredentialError::Hash(e.to_string()))?;
    Ok(hash.to_string())
}

/// Parses `phc` and checks that it is an Argon2 hash with a salt and an
/// output, and costs within `limits`.
pub fn check_phc(phc: &str, limits: &PhcLimits) -> Result<(), CredentialError> {
    parse_phc(phc, limits).map(|_| ())
}

fn parse_phc(phc: &str, limits: &PhcLimits) -> Result<PasswordHash, CredentialError> {
    let hash = PasswordHash::new(phc).map_err(|e| CredentialError::Malformed(e.to_string()))?;
    let algorithm = hash.algorithm.as_str();
    if !matches!(algorithm, "argon2id" | "argon2i" | "argon2d") {
        return Err(CredentialError::Algorithm(algorithm.to_string()));
    }
    if hash.salt.is_none() || hash.hash.is_none() {
        return Err(CredentialError::Malformed(
            "salt or hash output missing".into(),
        ));
    }
    let params = Params::try_from(&hash).map_err(|e| CredentialError::Params(e.to_string()))?;
    for (name, value, max) in [
        ("m", params.m_cost(), limits.max_m_cost_kib),
        ("t", params.t_cost(), limits.max_t_cost),
        ("p", params.p_cost(), limits.max_p_cost),
    ] {
        if value > max {
            return Err(CredentialError::CostTooHigh { name, value, max });
        }
    }
    Ok(hash)
}

/// Checks `password` against the PHC string `phc`, with the costs stored in
/// it (within [`PhcLimits::default`]). `Ok(false)` for a wrong password
/// (or one longer than [`MAX_PASSWORD_LEN`]); `Err` when `phc` is not a
/// usable hash. The comparison is constant-time.
///
/// Costs one Argon2 run: about 20 to 50 ms of one core with
/// [`HashParams::OWASP`] (see the crate's tests for the measured figure).
pub fn verify_password(phc: &str, password: &str) -> Result<bool, CredentialError> {
    let hash = parse_phc(phc, &PhcLimits::default())?;
    if password.len() > MAX_PASSWORD_LEN {
        return Ok(false);
    }
    match Argon2::default().verify_password(password.as_bytes(), &hash) {
        Ok(()) => Ok(true),
        Err(PhError::PasswordInvalid) => Ok(false),
        Err(e) => Err(CredentialError::Hash(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn hash_then_verify() {
        let phc = hash_password("hunter2", &HashParams::INSECURE_FAST).unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=64,t=1,p=1$"), "{phc}");
        assert!(!phc.contains("hunter2"));
        assert!(verify_password(&phc, "hunter2").unwrap());
        assert!(!verify_password(&phc, "hunter3").unwrap());
        assert!(!verify_password(&phc, &"x".repeat(MAX_PASSWORD_LEN + 1)).unwrap());
        // Two hashes of one password differ (random salt).
        let again = hash_password("hunter2", &HashParams::INSECURE_FAST).unwrap();
        assert_ne!(phc, again);
    }

    #[test]
    fn bad_phc_strings_are_errors() {
        assert!(matches!(
            verify_password("not a hash", "x"),
            Err(CredentialError::Malformed(_))
        ));
        assert!(matches!(
            check_phc(
                "$bcrypt$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$aGFzaGhhc2hoYXNoaGFzaA",
                &PhcLimits::default()
            ),
            Err(CredentialError::Algorithm(_))
        ));
        let huge = "$argon2id$v=19$m=4194304,t=1,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaA";
        assert_eq!(
            check_phc(huge, &PhcLimits::default()),
            Err(CredentialError::CostTooHigh {
                name: "m",
                value: 4_194_304,
                max: 262_144
            })
        );
        assert!(matches!(
            check_phc("$argon2id$v=19$m=64,t=1,p=1", &PhcLimits::default()),
            Err(CredentialError::Malformed(_))
        ));
        assert!(matches!(
            hash_password(
                "x",
                &HashParams {
                    m_cost_kib: 1,
                    t_cost: 1,
                    p_cost: 1
                }
            ),
            Err(CredentialError::Params(_))
        ));
    }

    /// Prints what one check costs with the default (OWASP) parameters.
    #[test]
    fn owasp_verify_cost() {
        let phc = hash_password("correct horse", &HashParams::default()).unwrap();
        assert!(phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        let runs = 3;
        let start = Instant::now();
        for _ in 0..runs {
            assert!(verify_password(&phc, "correct horse").unwrap());
        }
        let each = start.elapsed() / runs;
        println!("argon2id m=19456,t=2,p=1 verify: {each:?} per check");
    }
}
