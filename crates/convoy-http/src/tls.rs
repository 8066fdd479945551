//! TLS with rustls (ring): termination on HTTP listeners — certificates
//! chosen by SNI with a default, ALPN h2/http1.1, TLS 1.2 and 1.3, session
//! resumption (a session cache and tickets that survive certificate
//! reloads), optional client certificates — and TLS towards servers with a
//! configured CA and SNI name.
//!
//! A listener's [`TlsState`] holds the server config in an `ArcSwap`:
//! reloading certificates swaps it, so new handshakes use the new
//! certificates while open connections keep theirs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use arc_swap::ArcSwap;
use convoy_config::{Tls, UpstreamTls};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert, StoresServerSessions, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;

/// Certificates by SNI name, with a default.
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// "*.example.com" stored as ".example.com".
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = hello.server_name() {
            let name = name.to_ascii_lowercase();
            if let Some(k) = self.exact.get(&name) {
                return Some(Arc::clone(k));
            }
            if let Some(dot) = name.find('.') {
                if let Some(k) = self.wildcard.get(&name[dot..]) {
                    return Some(Arc::clone(k));
                }
            }
        }
        self.default.clone()
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?
        .collect();
    let certs = certs.map_err(|e| format!("{}: bad PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", path.display()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path)
        .map_err(|e| format!("cannot read a private key from {}: {e}", path.display()))
}

/// Loads a certificate chain and its key, checking that they belong
/// together.
fn certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, String> {
    let chain = read_certs(cert)?;
    let key_der = read_key(key)?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| format!("{}: unsupported private key: {e}", key.display()))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|e| {
        format!(
            "{} and {} do not belong together: {e}",
            cert.display(),
            key.display()
        )
    })?;
    Ok(Arc::new(ck))
}

fn roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let mut store = rustls::RootCertStore::empty();
    for c in read_certs(path)? {
        store
            .add(c)
            .map_err(|e| format!("{}: not a usable CA certificate: {e}", path.display()))?;
    }
    Ok(store)
}

/// What survives a certificate reload: session resumption state.
#[derive(Debug)]
struct Resumption {
    cache: Arc<dyn StoresServerSessions>,
    ticketer: Arc<dyn rustls::server::ProducesTickets>,
}

impl Resumption {
    fn new() -> Result<Self, String> {
        Ok(Resumption {
            cache: rustls::server::ServerSessionMemoryCache::new(4096),
            ticketer: rustls::crypto::ring::Ticketer::new()
                .map_err(|e| format!("cannot make a ticket key: {e}"))?,
        })
    }
}

/// Builds a rustls server config from a listener's `tls` section.
fn server_config(t: &Tls, res: &Resumption) -> Result<Arc<rustls::ServerConfig>, String> {
    let mut r = SniResolver {
        exact: HashMap::new(),
        wildcard: HashMap::new(),
        default: None,
    };
    for (i, c) in t.certificates.iter().enumerate() {
        let ck = certified_key(&c.cert, &c.key).map_err(|e| format!("certificates[{i}]: {e}"))?;
        if c.names.is_empty() {
            r.default = Some(Arc::clone(&ck));
        }
        for n in &c.names {
            let n = n.to_ascii_lowercase();
            // The certificate must be valid for the name (checked the way
            // clients will check it).
            let check = n
                .strip_prefix("*.")
                .map_or(n.clone(), |rest| format!("x.{rest}"));
            let sn = ServerName::try_from(check.as_str())
                .map_err(|_| format!("certificates[{i}]: {n:?} is not a DNS name"))?;
            let mut probe = rustls::server::ResolvesServerCertUsingSni::new();
            let probe_name = match &sn {
                ServerName::DnsName(d) => d.as_ref().to_string(),
                _ => check.clone(),
            };
            probe.add(&probe_name, (*ck).clone()).map_err(|e| {
                format!(
                    "certificates[{i}]: {} is not valid for {n:?}: {e}",
                    c.cert.display()
                )
            })?;
            match n.strip_prefix('*') {
                Some(suffix) => r.wildcard.insert(suffix.to_string(), Arc::clone(&ck)),
                None => r.exact.insert(n, Arc::clone(&ck)),
            };
        }
    }
    let versions: &[&'static rustls::SupportedProtocolVersion] =
        if t.min_version == convoy_config::TlsVersion::V1_3 {
            &[&rustls::version::TLS13]
        } else {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(versions)
        .map_err(|e| format!("TLS versions: {e}"))?;
    let builder = match &t.client_ca {
        Some(ca) => {
            let roots = Arc::new(roots(ca).map_err(|e| format!("client_ca: {e}"))?);
            let v = WebPkiClientVerifier::builder_with_provider(roots, provider);
            let v = if t.client_auth == convoy_config::ClientAuth::Optional {
                v.allow_unauthenticated()
            } else {
                v
            };
            builder.with_client_cert_verifier(v.build().map_err(|e| format!("client_ca: {e}"))?)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_cert_resolver(Arc::new(r));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    cfg.session_storage = Arc::clone(&res.cache);
    cfg.ticketer = Arc::clone(&res.ticketer);
    Ok(Arc::new(cfg))
}

/// Checks a listener's TLS files (for `convoy check` and before a reload).
pub fn check(t: &Tls) -> Result<(), String> {
    server_config(t, &Resumption::new()?).map(|_| ())
}

/// A TLS listener's live state: the config new handshakes use, and the
/// files it came from (for reloads on change).
#[derive(Debug)]
pub struct TlsState {
    cfg: Tls,
    server: ArcSwap<rustls::ServerConfig>,
    res: Resumption,
    stamps: Mutex<Vec<(PathBuf, Option<SystemTime>)>>,
}

fn stamps(t: &Tls) -> Vec<(PathBuf, Option<SystemTime>)> {
    let mut files: Vec<PathBuf> = t
        .certificates
        .iter()
        .flat_map(|c| [c.cert.clone(), c.key.clone()])
        .collect();
    files.extend(t.client_ca.clone());
    files
        .into_iter()
        .map(|f| {
            let m = std::fs::metadata(&f).and_then(|m| m.modified()).ok();
            (f, m)
        })
        .collect()
}

/// Certificates read and checked by [`TlsState::prepare`], not in use yet.
#[derive(Debug)]
pub struct Prepared(
    Arc<rustls::ServerConfig>,
    Vec<(PathBuf, Option<SystemTime>)>,
);

impl TlsState {
    /// Loads the certificates of `t`.
    pub fn new(t: &Tls) -> Result<Arc<TlsState>, String> {
        let res = Resumption::new()?;
        let server = server_config(t, &res)?;
        Ok(Arc::new(TlsState {
            cfg: t.clone(),
            server: ArcSwap::new(server),
            res,
            stamps: Mutex::new(stamps(t)),
        }))
    }

    /// The config for the next handshake.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.server.load_full())
    }

    /// Reads the files again and, if they load, uses them for new
    /// handshakes. On error the current certificates stay.
    pub fn reload(&self) -> Result<(), String> {
        let cfg = self.prepare()?;
        self.commit(cfg);
        Ok(())
    }

    /// Reads and checks the files without using them yet (a reload of
    /// several listeners prepares them all before any one switches).
    pub fn prepare(&self) -> Result<Prepared, String> {
        Ok(Prepared(
            server_config(&self.cfg, &self.res)?,
            stamps(&self.cfg),
        ))
    }

    /// Uses certificates read by [`TlsState::prepare`] for new handshakes.
    pub fn commit(&self, p: Prepared) {
        self.server.store(p.0);
        *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) = p.1;
    }

    /// Reloads if a file changed since the last load; `Some(result)` when
    /// it tried.
    pub fn reload_if_changed(&self) -> Option<Result<(), String>> {
        let now = stamps(&self.cfg);
        let changed = *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) != now;
        if !changed {
            return None;
        }
        let r = self.reload();
        if r.is_err() {
            // Do not retry a broken file on every check; wait for the next
            // change.
            *self.stamps.lock().unwrap_or_else(|e| e.into_inner()) = now;
        }
        Some(r)
    }

    /// The watch interval, if the listener watches its files.
    pub fn watch(&self) -> Option<std::time::Duration> {
        self.cfg.watch.map(|d| d.get())
    }
}

/// A rustls client config for a pool's servers.
pub fn client_config(t: &UpstreamTls, h2: bool) -> Result<rustls::ClientConfig, String> {
    let roots = roots(&t.ca).map_err(|e| format!("tls.ca: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // ALPN (h2 or http/1.1) is set by the connector from `h2`.
    let _ = h2;
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(cfg)
}
