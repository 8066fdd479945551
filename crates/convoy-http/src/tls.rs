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

/// Why TLS settings cannot be used: a file that does not read, a key that
/// does not match, a name the certificate does not cover. The message
/// names the file and, for listeners, the certificate's place in the
/// list.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file cannot be read.
    #[error("cannot read {}: {source}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rustls::pki_types::pem::Error,
    },
    /// A PEM file holds something else than certificates.
    #[error("{}: bad PEM: {source}", .path.display())]
    BadPem {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rustls::pki_types::pem::Error,
    },
    /// A certificate file holds no certificate.
    #[error("{}: no certificate in it", .path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A key file holds no private key that reads.
    #[error("cannot read a private key from {}: {source}", .path.display())]
    Key {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rustls::pki_types::pem::Error,
    },
    /// A private key of a kind rustls does not sign with.
    #[error("{}: unsupported private key: {source}", .path.display())]
    UnsupportedKey {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rustls::Error,
    },
    /// A certificate and a key of different pairs.
    #[error("{} and {} do not belong together: {source}", .cert.display(), .key.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// Why.
        source: rustls::Error,
    },
    /// A CA file whose certificate cannot be a trust anchor.
    #[error("{}: not a usable CA certificate: {source}", .path.display())]
    BadCa {
        /// The file.
        path: PathBuf,
        /// Why.
        source: rustls::Error,
    },
    /// A listener's certificate `index` (`certificates[index]`).
    #[error("certificates[{index}]: {source}")]
    Certificate {
        /// Its place in the list.
        index: usize,
        /// Why.
        source: Box<TlsError>,
    },
    /// A name in `names` that is not a DNS name.
    #[error("certificates[{index}]: {name:?} is not a DNS name")]
    NotDnsName {
        /// The certificate's place in the list.
        index: usize,
        /// The name.
        name: String,
    },
    /// A certificate not valid for a name it is given.
    #[error("certificates[{index}]: {} is not valid for {name:?}: {source}", .cert.display())]
    NotValidFor {
        /// The certificate's place in the list.
        index: usize,
        /// Its file.
        cert: PathBuf,
        /// The name.
        name: String,
        /// Why.
        source: rustls::Error,
    },
    /// The listener's `client_ca`.
    #[error("client_ca: {0}")]
    ClientCa(Box<TlsError>),
    /// A client verifier that cannot be built from `client_ca`.
    #[error("client_ca: {0}")]
    ClientVerifier(rustls::server::VerifierBuilderError),
    /// A pool's `tls.ca`.
    #[error("tls.ca: {0}")]
    Ca(Box<TlsError>),
    /// rustls refused the settings (versions, tickets).
    #[error("{0}")]
    Rustls(#[from] rustls::Error),
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|source| TlsError::Read {
            path: path.into(),
            source,
        })?
        .collect();
    let certs = certs.map_err(|source| TlsError::BadPem {
        path: path.into(),
        source,
    })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { path: path.into() });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::Key {
        path: path.into(),
        source,
    })
}

/// Loads a certificate chain and its key, checking that they belong
/// together.
fn certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = read_certs(cert)?;
    let key_der = read_key(key)?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der).map_err(|source| {
        TlsError::UnsupportedKey {
            path: key.into(),
            source,
        }
    })?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().map_err(|source| TlsError::Mismatch {
        cert: cert.into(),
        key: key.into(),
        source,
    })?;
    Ok(Arc::new(ck))
}

fn roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut store = rustls::RootCertStore::empty();
    for c in read_certs(path)? {
        store.add(c).map_err(|source| TlsError::BadCa {
            path: path.into(),
            source,
        })?;
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
    fn new() -> Result<Self, TlsError> {
        Ok(Resumption {
            cache: rustls::server::ServerSessionMemoryCache::new(4096),
            ticketer: rustls::crypto::ring::Ticketer::new()?,
        })
    }
}

/// Builds a rustls server config from a listener's `tls` section.
fn server_config(t: &Tls, res: &Resumption) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut r = SniResolver {
        exact: HashMap::new(),
        wildcard: HashMap::new(),
        default: None,
    };
    for (i, c) in t.certificates.iter().enumerate() {
        let ck = certified_key(&c.cert, &c.key).map_err(|e| TlsError::Certificate {
            index: i,
            source: Box::new(e),
        })?;
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
            let sn = ServerName::try_from(check.as_str()).map_err(|_| TlsError::NotDnsName {
                index: i,
                name: n.clone(),
            })?;
            let mut probe = rustls::server::ResolvesServerCertUsingSni::new();
            let probe_name = match &sn {
                ServerName::DnsName(d) => d.as_ref().to_string(),
                _ => check.clone(),
            };
            probe
                .add(&probe_name, (*ck).clone())
                .map_err(|source| TlsError::NotValidFor {
                    index: i,
                    cert: c.cert.clone(),
                    name: n.clone(),
                    source,
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
        .with_protocol_versions(versions)?;
    let builder = match &t.client_ca {
        Some(ca) => {
            let roots = Arc::new(roots(ca).map_err(|e| TlsError::ClientCa(Box::new(e)))?);
            let v = WebPkiClientVerifier::builder_with_provider(roots, provider);
            let v = if t.client_auth == convoy_config::ClientAuth::Optional {
                v.allow_unauthenticated()
            } else {
                v
            };
            builder.with_client_cert_verifier(v.build().map_err(TlsError::ClientVerifier)?)
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
pub fn check(t: &Tls) -> Result<(), TlsError> {
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
    pub fn new(t: &Tls) -> Result<Arc<TlsState>, TlsError> {
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
    pub fn reload(&self) -> Result<(), TlsError> {
        let cfg = self.prepare()?;
        self.commit(cfg);
        Ok(())
    }

    /// Reads and checks the files without using them yet (a reload of
    /// several listeners prepares them all before any one switches).
    pub fn prepare(&self) -> Result<Prepared, TlsError> {
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
    pub fn reload_if_changed(&self) -> Option<Result<(), TlsError>> {
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
pub fn client_config(t: &UpstreamTls, h2: bool) -> Result<rustls::ClientConfig, TlsError> {
    let roots = roots(&t.ca).map_err(|e| TlsError::Ca(Box::new(e)))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // ALPN (h2 or http/1.1) is set by the connector from `h2`.
    let _ = h2;
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(cfg)
}
