//! Records written under a held lease beside the holder record (the leader record of
//! [`crate::election`]), and a lock's state read within a deadline.

use super::*;

impl AzureMutex {
    /// Sets (or, with `None`, removes) the metadata items `items` on `lock`'s blob under lease
    /// `id`, keeping every other item: a
    /// [Get Blob Properties](https://learn.microsoft.com/en-us/rest/api/storageservices/get-blob-properties)
    /// then a [Set Blob Metadata](https://learn.microsoft.com/en-us/rest/api/storageservices/set-blob-metadata)
    /// under the lease with `If-Match` (read again if the blob changed in between; at most three
    /// rounds), bounded by `deadline`.
    ///
    /// Names must be lower-case ASCII letters and digits, starting with a letter; values are
    /// written as given (percent-encode text that may hold anything else). The write fails
    /// with [`Error::LeaseLost`] unless the lease `id` is the blob's active lease.
    pub async fn update_metadata(
        &self,
        lock: &LockName,
        id: LeaseId,
        items: &[(&str, Option<String>)],
        deadline: Instant,
    ) -> Result<(), Error> {
        for (name, _) in items {
            let ok = name.starts_with(|c: char| c.is_ascii_lowercase())
                && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
            if !ok {
                return Err(Error::InvalidInput(InvalidInput::Option {
                    option: "metadata name",
                    why: format!(
                        "{} is not lower-case ASCII letters and digits starting with a letter",
                        crate::error::sanitize_text(name, 64)
                    ),
                }));
            }
        }
        for _ in 0..3 {
            let resp = self.head(lock, deadline).await?;
            if resp.status == 404 {
                return Err(Error::LeaseLost {
                    lock: lock.to_string(),
                    reason: LostReason::Deleted,
                    service: Some(resp.error()),
                });
            }
            let props = Props::from(&resp);
            let mut metadata = props.metadata;
            for (name, value) in items {
                match value {
                    Some(v) => metadata.insert((*name).to_string(), v.clone()),
                    None => metadata.remove(*name),
                };
            }
            if self
                .set_metadata(lock, id, &metadata, props.etag.as_deref(), deadline)
                .await?
            {
                return Ok(());
            }
        }
        Err(Error::Unexpected {
            service: ServiceError {
                status: 412,
                code: Some("ConditionNotMet".into()),
                request_id: None,
                message: None,
            },
            detail: "the lock blob kept changing while writing its record".into(),
        })
    }
}
