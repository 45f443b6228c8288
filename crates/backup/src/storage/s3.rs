//! S3 backend (aws-sdk-s3): custom endpoint and path-style for S3-compatible servers,
//! multipart upload for large objects, the SDK's retries plus ours around whole operations.

use async_trait::async_trait;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use pgha_config::S3Config;

use super::retry::retry;
use super::{ObjectInfo, Storage};
use crate::{BackupError, Result};

/// Objects larger than this go up in parts of this size (S3's minimum part is 5 MiB).
const PART_SIZE: usize = 8 << 20;
const ATTEMPTS: u32 = 4;

/// A repository in an S3 bucket under a prefix.
#[derive(Debug, Clone)]
pub struct S3Storage {
    client: Client,
    bucket: String,
    prefix: String,
}

impl S3Storage {
    /// Builds the client; reads the credentials now.
    pub fn new(cfg: &S3Config) -> Result<Self> {
        let key_id = cfg.access_key_id.read()?;
        let secret = cfg.secret_access_key.read()?;
        let mut b = aws_sdk_s3::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(cfg.region.clone()))
            .credentials_provider(Credentials::new(
                key_id.expose(),
                secret.expose(),
                None,
                None,
                "pgha-config",
            ))
            .retry_config(RetryConfig::standard().with_max_attempts(3))
            .force_path_style(cfg.path_style);
        if let Some(e) = &cfg.endpoint {
            b = b.endpoint_url(e);
        }
        let mut prefix = cfg.prefix.trim_start_matches('/').to_owned();
        if !prefix.is_empty() && !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(S3Storage {
            client: Client::from_conf(b.build()),
            bucket: cfg.bucket.clone(),
            prefix,
        })
    }

    fn full(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn err<E, R>(&self, op: &'static str, key: &str, e: SdkError<E, R>) -> BackupError
    where
        E: std::error::Error + ProvideErrorMetadata + Send + Sync + 'static,
        R: std::fmt::Debug + Send + Sync + 'static,
    {
        let transient = match &e {
            SdkError::TimeoutError(_)
            | SdkError::DispatchFailure(_)
            | SdkError::ResponseError(_) => true,
            SdkError::ServiceError(se) => {
                matches!(
                    se.err().code(),
                    Some("SlowDown" | "InternalError" | "ServiceUnavailable" | "RequestTimeout")
                )
            }
            _ => false,
        };
        BackupError::Storage {
            op,
            key: key.to_owned(),
            repo: self.describe(),
            message: DisplayErrorContext(&e).to_string(),
            transient,
        }
    }

    /// Stores `data`; with `if_absent`, only when no object is there (`If-None-Match: *`):
    /// `Ok(false)` when one is.
    async fn put_once(&self, key: &str, data: &[u8], if_absent: bool) -> Result<bool> {
        let full = self.full(key);
        if data.len() <= PART_SIZE {
            let r = self
                .client
                .put_object()
                .bucket(&self.bucket)
                .key(&full)
                .set_if_none_match(if_absent.then(|| "*".to_owned()))
                .body(ByteStream::from(data.to_vec()))
                .send()
                .await;
            return match r {
                Ok(_) => Ok(true),
                Err(e) if if_absent && precondition_failed(&e) => Ok(false),
                Err(e) => Err(self.err("put", key, e)),
            };
        }
        let up = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| self.err("create multipart upload", key, e))?;
        let Some(id) = up.upload_id() else {
            return Err(BackupError::Storage {
                op: "create multipart upload",
                key: key.to_owned(),
                repo: self.describe(),
                message: "no upload id in the answer".into(),
                transient: true,
            });
        };
        let result = self.upload_parts(key, &full, id, data, if_absent).await;
        if !matches!(result, Ok(true)) {
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&full)
                .upload_id(id)
                .send()
                .await;
        }
        result
    }

    async fn upload_parts(
        &self,
        key: &str,
        full: &str,
        id: &str,
        data: &[u8],
        if_absent: bool,
    ) -> Result<bool> {
        let mut parts = Vec::new();
        for (i, chunk) in data.chunks(PART_SIZE).enumerate() {
            let n = i as i32 + 1;
            let out = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(full)
                .upload_id(id)
                .part_number(n)
                .body(ByteStream::from(chunk.to_vec()))
                .send()
                .await
                .map_err(|e| self.err("upload part", key, e))?;
            parts.push(
                CompletedPart::builder()
                    .set_e_tag(out.e_tag().map(str::to_owned))
                    .part_number(n)
                    .build(),
            );
        }
        let r = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(full)
            .upload_id(id)
            .set_if_none_match(if_absent.then(|| "*".to_owned()))
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) if if_absent && precondition_failed(&e) => Ok(false),
            Err(e) => Err(self.err("complete multipart upload", key, e)),
        }
    }

    async fn get_once(&self, key: &str) -> Result<Vec<u8>> {
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .send()
            .await
            .map_err(|e| {
                if e.as_service_error().is_some_and(|s| s.is_no_such_key()) {
                    BackupError::NotFound {
                        key: key.to_owned(),
                        repo: self.describe(),
                    }
                } else {
                    self.err("get", key, e)
                }
            })?;
        let body = out.body.collect().await.map_err(|e| BackupError::Storage {
            op: "read body of",
            key: key.to_owned(),
            repo: self.describe(),
            message: e.to_string(),
            transient: true,
        })?;
        Ok(body.into_bytes().to_vec())
    }

    async fn list_once(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(self.full(prefix))
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| self.err("list", prefix, e))?;
            for o in page.contents() {
                if let Some(k) = o.key() {
                    out.push(ObjectInfo {
                        key: k.strip_prefix(&self.prefix).unwrap_or(k).to_owned(),
                        size: o.size().unwrap_or(0).max(0) as u64,
                    });
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated() == Some(true) => token = Some(t.to_owned()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}

/// The server refused a conditional write because the object exists (412), or another
/// conditional write of the same key is in flight (409).
fn precondition_failed<E: ProvideErrorMetadata, R>(e: &SdkError<E, R>) -> bool {
    let code = match e {
        SdkError::ServiceError(se) => se.err().code(),
        _ => None,
    };
    matches!(
        code,
        Some("PreconditionFailed" | "ConditionalRequestConflict")
    )
}

#[async_trait]
impl Storage for S3Storage {
    async fn put(&self, key: &str, data: Vec<u8>) -> Result<()> {
        retry(ATTEMPTS, || self.put_once(key, &data, false))
            .await
            .map(|_| ())
    }

    async fn put_if_absent(&self, key: &str, data: Vec<u8>) -> Result<bool> {
        // A retried attempt whose first try landed answers "exists": the caller compares the
        // content (wal-push) or the owner token (locks).
        retry(ATTEMPTS, || self.put_once(key, &data, true)).await
    }

    async fn get(&self, key: &str) -> Result<Vec<u8>> {
        retry(ATTEMPTS, || self.get_once(key)).await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        retry(ATTEMPTS, || self.list_once(prefix)).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        retry(ATTEMPTS, || async {
            self.client
                .delete_object()
                .bucket(&self.bucket)
                .key(self.full(key))
                .send()
                .await
                .map_err(|e| self.err("delete", key, e))
                .map(|_| ())
        })
        .await
    }

    async fn exists(&self, key: &str) -> Result<bool> {
        let r = self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(self.full(key))
            .send()
            .await;
        match r {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(false),
            Err(e) => Err(self.err("head", key, e)),
        }
    }

    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }
}
