//! A Docker Registry HTTP API v2 / OCI distribution client: manifests and blobs, anonymous or
//! with credentials, bearer tokens as registries hand them out, plain HTTP only for registries
//! the operator lists as insecure. Everything is verified against its digest as it lands in the
//! store; nothing unverified is ever named.
use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use husk_oci::image::{check_digest, store::Store, ImageError, Reference};
use tonic::Status;

use super::fetcher::{http_client, redirect, HttpClient};
use husk_proto::agent::v1 as pb;

pub type Progress = tokio::sync::mpsc::Sender<pb::PullProgress>;

const MANIFEST_TYPES: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";
const MAX_REDIRECTS: usize = 5;
/// Progress messages at most this often per blob (and at its end).
const PROGRESS_EVERY: u64 = 1 << 20;

pub struct Registry {
    client: Result<HttpClient, String>,
    /// Registries spoken to over plain HTTP (`host:port` as in references).
    insecure: Vec<String>,
    /// Credentials by registry: `user:password`.
    auths: HashMap<String, String>,
    /// Bearer tokens by (registry, repository).
    tokens: tokio::sync::Mutex<HashMap<(String, String), String>>,
    stall: Duration,
}

fn failed(r: &Reference, what: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("pulling {r}: {what}"))
}

/// Credentials from a Docker `config.json` (`auths.<registry>.auth`, base64 `user:password`,
/// or `username` and `password`).
pub fn load_auths(path: &std::path::Path) -> anyhow::Result<HashMap<String, String>> {
    use base64::Engine;
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut out = HashMap::new();
    for (key, entry) in v.get("auths").and_then(|a| a.as_object()).into_iter().flatten() {
        let host = key.trim_start_matches("https://").trim_start_matches("http://");
        let host = host.split('/').next().unwrap_or_default();
        let host = match host {
            "index.docker.io" | "registry-1.docker.io" => husk_oci::image::reference::DEFAULT_REGISTRY,
            h => h,
        };
        let pair = match (entry.get("auth").and_then(|a| a.as_str()), entry.get("username"), entry.get("password")) {
            (Some(b64), _, _) => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .map_err(|e| anyhow::anyhow!("{}: auths.{key}.auth: {e}", path.display()))?;
                String::from_utf8(raw)
                    .map_err(|_| anyhow::anyhow!("{}: auths.{key}.auth is not UTF-8", path.display()))?
            }
            (None, Some(u), Some(p)) => {
                format!("{}:{}", u.as_str().unwrap_or_default(), p.as_str().unwrap_or_default())
            }
            _ => continue,
        };
        if !pair.contains(':') {
            anyhow::bail!("{}: auths.{key}: want user:password", path.display());
        }
        out.insert(host.to_string(), pair);
    }
    Ok(out)
}

/// The parameters of a `WWW-Authenticate` challenge: `Bearer realm="..",service="..",scope=".."`.
fn challenge(header: &str) -> (String, HashMap<String, String>) {
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = HashMap::new();
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let Some((key, after)) = rest.split_once('=') else { break };
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let (value, after) = match after.strip_prefix('"') {
            Some(q) => match q.split_once('"') {
                Some((v, a)) => (v.to_string(), a),
                None => (q.to_string(), ""),
            },
            None => match after.split_once(',') {
                Some((v, a)) => (v.to_string(), a),
                None => (after.to_string(), ""),
            },
        };
        params.insert(key, value);
        rest = after.trim_start_matches(',').trim();
    }
    (scheme.to_ascii_lowercase(), params)
}

fn escape_query(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            b => format!("%{b:02X}"),
        })
        .collect()
}

impl Registry {
    pub fn new(insecure: Vec<String>, auths: HashMap<String, String>, stall: Duration) -> Registry {
        Registry { client: http_client(), insecure, auths, tokens: Default::default(), stall }
    }

    /// The same registry client with `user:password` for `registry` only, and tokens of its
    /// own: one request's credentials (a CRI PullImage's) never serve another pull.
    pub fn with_credentials(&self, registry: &str, user_password: String) -> Registry {
        Registry {
            client: self.client.clone(),
            insecure: self.insecure.clone(),
            auths: HashMap::from([(registry.to_string(), user_password)]),
            tokens: Default::default(),
            stall: self.stall,
        }
    }

    fn base(&self, r: &Reference) -> String {
        let scheme = if self.insecure.contains(&r.registry) { "http" } else { "https" };
        let host = match r.registry.as_str() {
            husk_oci::image::reference::DEFAULT_REGISTRY => "registry-1.docker.io",
            h => h,
        };
        format!("{scheme}://{host}/v2/{}", r.repository)
    }

    fn basic(&self, r: &Reference) -> Option<String> {
        use base64::Engine;
        self.auths.get(&r.registry).map(|p| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(p)))
    }

    async fn send(
        &self,
        url: &str,
        accept: Option<&str>,
        auth: Option<&str>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, String> {
        let client = self.client.as_ref().map_err(Clone::clone)?;
        let mut target: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        let origin = target.authority().cloned();
        for _ in 0..=MAX_REDIRECTS {
            let mut req = hyper::Request::get(target.clone())
                .header(hyper::header::USER_AGENT, concat!("husk/", env!("CARGO_PKG_VERSION")));
            if let Some(a) = accept {
                req = req.header(hyper::header::ACCEPT, a);
            }
            // Credentials go to the registry only, never to where it redirects blobs.
            if let Some(a) = auth.filter(|_| target.authority() == origin.as_ref()) {
                req = req.header(hyper::header::AUTHORIZATION, a);
            }
            let req = req.body(Empty::<Bytes>::new()).map_err(|e| e.to_string())?;
            let resp = tokio::time::timeout(self.stall, client.request(req))
                .await
                .map_err(|_| format!("no answer from {} within {:?}", target, self.stall))?
                .map_err(|e| format!("{target}: {}", crate::client::chain(&e)))?;
            if resp.status().is_redirection() {
                let location = resp
                    .headers()
                    .get(hyper::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| format!("{target}: HTTP {} without a Location", resp.status()))?;
                target = redirect(&target, location)?;
                continue;
            }
            return Ok(resp);
        }
        Err(format!("{url}: more than {MAX_REDIRECTS} redirects"))
    }

    /// GET `path` below the repository, answering the registry's auth challenge once.
    async fn get(
        &self,
        r: &Reference,
        path: &str,
        accept: Option<&str>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, Status> {
        let url = format!("{}/{path}", self.base(r));
        let key = (r.registry.clone(), r.repository.clone());
        let cached = self.tokens.lock().await.get(&key).cloned();
        let auth = cached.or_else(|| self.basic(r));
        let resp = self.send(&url, accept, auth.as_deref()).await.map_err(|e| failed(r, e))?;
        if resp.status() != hyper::StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        let header = resp
            .headers()
            .get(hyper::header::WWW_AUTHENTICATE)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let (scheme, params) = challenge(&header);
        let auth = match scheme.as_str() {
            "bearer" => {
                let token = self.token(r, &params).await?;
                self.tokens.lock().await.insert(key, token.clone());
                token
            }
            "basic" => self.basic(r).ok_or_else(|| {
                Status::unauthenticated(format!("pulling {r}: the registry wants credentials and none are configured"))
            })?,
            _ => return Err(Status::unauthenticated(format!("pulling {r}: unauthorized (challenge `{header}`)"))),
        };
        self.send(&url, accept, Some(&auth)).await.map_err(|e| failed(r, e))
    }

    async fn token(&self, r: &Reference, params: &HashMap<String, String>) -> Result<String, Status> {
        let realm = params
            .get("realm")
            .ok_or_else(|| Status::unauthenticated(format!("pulling {r}: a bearer challenge without a realm")))?;
        let scope = params.get("scope").cloned().unwrap_or_else(|| format!("repository:{}:pull", r.repository));
        let mut url = format!("{realm}?scope={}", escape_query(&scope));
        if let Some(service) = params.get("service") {
            url.push_str(&format!("&service={}", escape_query(service)));
        }
        let resp = self.send(&url, None, self.basic(r).as_deref()).await.map_err(|e| failed(r, e))?;
        let status = resp.status();
        let body = self.body(r, resp, 1 << 20).await?;
        if !status.is_success() {
            return Err(Status::unauthenticated(format!("pulling {r}: the token service answered HTTP {status}")));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| failed(r, format!("token response: {e}")))?;
        let token = v.get("token").or_else(|| v.get("access_token")).and_then(|t| t.as_str()).unwrap_or_default();
        if token.is_empty() {
            return Err(Status::unauthenticated(format!("pulling {r}: the token service gave no token")));
        }
        Ok(format!("Bearer {token}"))
    }

    /// A whole (small) body, at most `max` bytes.
    async fn body(
        &self,
        r: &Reference,
        resp: hyper::Response<hyper::body::Incoming>,
        max: u64,
    ) -> Result<Vec<u8>, Status> {
        let mut body = resp.into_body();
        let mut out = Vec::new();
        while let Some(frame) = tokio::time::timeout(self.stall, body.frame())
            .await
            .map_err(|_| failed(r, format!("the transfer stalled for {:?}", self.stall)))?
        {
            let frame = frame.map_err(|e| failed(r, e))?;
            if let Ok(data) = frame.into_data() {
                out.extend_from_slice(&data);
                if out.len() as u64 > max {
                    return Err(Status::failed_precondition(format!("pulling {r}: a manifest over {max} bytes")));
                }
            }
        }
        Ok(out)
    }

    /// Fetches the manifest (or index) `reference` names into the store; returns its digest.
    async fn manifest(&self, store: &Store, r: &Reference, reference: &str) -> Result<String, Status> {
        let resp = self.get(r, &format!("manifests/{reference}"), Some(MANIFEST_TYPES)).await?;
        match resp.status() {
            s if s.is_success() => {}
            hyper::StatusCode::NOT_FOUND => {
                return Err(Status::not_found(format!("pulling {r}: {reference} not found")))
            }
            s => return Err(failed(r, format!("manifest {reference}: HTTP {s}"))),
        }
        let header_digest =
            resp.headers().get("docker-content-digest").and_then(|d| d.to_str().ok()).map(str::to_string);
        let data = self.body(r, resp, husk_oci::image::MAX_MANIFEST_BYTES).await?;
        let digest = format!("sha256:{}", husk_oci::image::sha256_hex(&data));
        let expected = match check_digest(reference) {
            Ok(_) => Some(reference.to_string()),
            Err(_) => header_digest.filter(|d| d.starts_with("sha256:")),
        };
        if let Some(e) = expected.filter(|e| *e != digest) {
            return Err(Status::failed_precondition(format!(
                "pulling {r}: digest mismatch: expected {e}, the manifest is {digest}"
            )));
        }
        store.put_bytes(&data).map_err(|e| super::images::status(&format!("pulling {r}"), e))
    }

    /// Fetches the blob `digest` into the store unless it is there.
    async fn blob(
        &self,
        store: &Store,
        r: &Reference,
        digest: &str,
        size: u64,
        progress: Option<&Progress>,
        done: (u32, u32),
    ) -> Result<(), Status> {
        if store.has_blob(digest) {
            return Ok(());
        }
        let resp = self.get(r, &format!("blobs/{digest}"), None).await?;
        if !resp.status().is_success() {
            return Err(failed(r, format!("blob {digest}: HTTP {}", resp.status())));
        }
        let stored = |e: ImageError| super::images::status(&format!("pulling {r}"), e);
        let mut writer = store.begin_blob(digest, Some(size)).map_err(stored)?;
        let mut body = resp.into_body();
        let mut reported = 0u64;
        while let Some(frame) = tokio::time::timeout(self.stall, body.frame())
            .await
            .map_err(|_| failed(r, format!("blob {digest}: the transfer stalled for {:?}", self.stall)))?
        {
            let frame = frame.map_err(|e| failed(r, format!("blob {digest}: {e}")))?;
            if let Ok(data) = frame.into_data() {
                tokio::task::block_in_place(|| std::io::Write::write_all(&mut writer, &data)).map_err(|e| {
                    match e.kind() {
                        std::io::ErrorKind::InvalidData => Status::failed_precondition(format!("pulling {r}: {e}")),
                        _ => Status::internal(format!("pulling {r}: writing {digest}: {e}")),
                    }
                })?;
                if let Some(p) = progress.filter(|_| writer.written() - reported >= PROGRESS_EVERY) {
                    reported = writer.written();
                    let _ = p.try_send(progress_of(digest, reported, size, done));
                }
            }
        }
        tokio::task::block_in_place(|| writer.commit()).map_err(stored)?;
        Ok(())
    }

    /// Pulls `r`: its manifest (the host platform's from an index), config and layers. Returns
    /// the manifest digest and the index digest when there was one. Naming is the caller's.
    pub async fn pull(
        &self,
        store: &Store,
        r: &Reference,
        progress: Option<&Progress>,
    ) -> Result<(String, Option<String>), Status> {
        let top = self.manifest(store, r, r.reference()).await?;
        let stored = |e: ImageError| super::images::status(&format!("pulling {r}"), e);
        let data = store.read_blob(&top, husk_oci::image::MAX_MANIFEST_BYTES).map_err(stored)?;
        let (digest, index) = match husk_oci::image::store::platform_manifest(&data, &top).map_err(stored)? {
            None => (top, None),
            Some(child) => {
                let d = self.manifest(store, r, &child).await?;
                if d != child {
                    return Err(Status::failed_precondition(format!("pulling {r}: {child} arrived as {d}")));
                }
                (d, Some(top))
            }
        };
        let manifest = store.manifest(&digest).map_err(stored)?;
        let total = manifest.layers().len() as u32;
        let config = manifest.config();
        self.blob(store, r, config.digest().as_ref(), config.size(), progress, (0, total)).await?;
        for (i, layer) in manifest.layers().iter().enumerate() {
            let d = layer.digest().to_string();
            self.blob(store, r, &d, layer.size(), progress, (i as u32, total)).await?;
            if let Some(p) = progress {
                let _ = p.send(progress_of(&d, layer.size(), layer.size(), (i as u32 + 1, total))).await;
            }
        }
        Ok((digest, index))
    }
}

fn progress_of(digest: &str, bytes: u64, total: u64, (done, all): (u32, u32)) -> pb::PullProgress {
    pb::PullProgress {
        digest: Some(digest.to_string()),
        bytes: Some(bytes),
        total: Some(total),
        layers_done: Some(done),
        layers_total: Some(all),
        image: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        let (scheme, p) = challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull""#,
        );
        assert_eq!(scheme, "bearer");
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/busybox:pull");
        let (scheme, p) = challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!((scheme.as_str(), p["realm"].as_str()), ("basic", "Registry Realm"));
        assert_eq!(escape_query("repository:a/b:pull"), "repository%3Aa%2Fb%3Apull");
    }

    #[test]
    fn credentials_from_a_docker_config() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"auths": {"https://index.docker.io/v1/": {"auth": "dXNlcjpwYXNz"},
                          "localhost:5000": {"username": "u", "password": "p:w"}}}"#,
        )
        .unwrap();
        let auths = load_auths(&path).unwrap();
        assert_eq!(auths["docker.io"], "user:pass");
        assert_eq!(auths["localhost:5000"], "u:p:w");
        std::fs::write(&path, r#"{"auths": {"x": {"auth": "!!"}}}"#).unwrap();
        assert!(load_auths(&path).is_err());
    }
}
