//! TLS for tests/tls_sasl.rs: a CA and a server certificate generated per run (rcgen), and
//! Debian's stunnel terminating TLS in front of a tansu broker (docs/brokers.md says why:
//! tansu 0.6.0's own `--cert`/`--key` cannot both be given).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// A directory with `ca.pem` (a CA made for this run), `server.pem` and `server.key` (a
/// certificate for 127.0.0.1 and localhost that the CA signed). Removed on drop.
pub struct TestCerts {
    pub dir: PathBuf,
}

impl TestCerts {
    pub fn generate() -> Self {
        let dir = std::env::temp_dir().join(format!("outbox-tls-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("certificate directory");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "outbox test CA");
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let ca_cert = ca.self_signed(&ca_key).expect("self-sign the CA");
        let issuer = Issuer::new(ca, ca_key);
        let server_key = KeyPair::generate().expect("server key");
        let mut server =
            CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).expect("server params");
        server.distinguished_name.push(DnType::CommonName, "127.0.0.1");
        let server_cert = server.signed_by(&server_key, &issuer).expect("sign the server certificate");
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).expect("ca.pem");
        std::fs::write(dir.join("server.pem"), server_cert.pem()).expect("server.pem");
        std::fs::write(dir.join("server.key"), server_key.serialize_pem()).expect("server.key");
        TestCerts { dir }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free 127.0.0.1 port (the kernel's pick, released for the caller to bind).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("pick a port").port()
}

/// stunnel accepting TLS on `127.0.0.1:port` with the test's server certificate and forwarding
/// the plain bytes to `backend`. Killed on drop.
pub struct Stunnel {
    child: Child,
    dir: PathBuf,
}

impl Stunnel {
    /// The stunnel binary (`STUNNEL_BIN`, else `scripts/tansu.sh`'s `stunnel_install`, which
    /// installs Debian's stunnel4 when it is missing).
    fn binary() -> Result<PathBuf, String> {
        if let Ok(bin) = std::env::var("STUNNEL_BIN")
            && !bin.is_empty()
        {
            return Ok(PathBuf::from(bin));
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = Command::new("bash")
            .arg("-c")
            .arg("source scripts/tansu.sh && stunnel_install && printf %s \"$STUNNEL_BIN\"")
            .current_dir(&root)
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("run scripts/tansu.sh: {e}"))?;
        match out.status.success() {
            true => Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).into_owned())),
            false => Err(format!("scripts/tansu.sh stunnel_install failed ({})", out.status)),
        }
    }

    pub fn start(certs: &TestCerts, port: u16, backend: &str) -> Result<Self, String> {
        let bin = Self::binary()?;
        let dir = certs.dir.join(format!("stunnel-{port}"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let conf = format!(
            "foreground = yes\npid =\noutput = {log}\ndebug = info\n\n[kafka]\naccept = 127.0.0.1:{port}\n\
             connect = {backend}\ncert = {cert}\nkey = {key}\n",
            log = dir.join("stunnel.log").display(),
            cert = certs.dir.join("server.pem").display(),
            key = certs.dir.join("server.key").display(),
        );
        std::fs::write(dir.join("stunnel.conf"), conf).map_err(|e| format!("stunnel.conf: {e}"))?;
        let mut child = Command::new(&bin)
            .arg(dir.join("stunnel.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("start {}: {e}", bin.display()))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let log = dir.join("stunnel.log");
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "stunnel exited ({status}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ));
            }
            // "Configuration successful" is logged once the listening socket is bound.
            if std::fs::read_to_string(&log).is_ok_and(|l| l.contains("Configuration successful")) {
                return Ok(Stunnel { child, dir });
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "stunnel not ready in 30 s: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What stunnel logged so far (`debug = info`: one "TLS accepted" line per handshake).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("stunnel.log")).unwrap_or_default()
    }
}

impl Drop for Stunnel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
