//! The artifact store on its S3 backend, against a real S3-compatible
//! server (moto): identical content is one object; a blob larger than one
//! part goes up as a multipart upload (its ETag counts the parts) and
//! reads back whole and by ranges; a sweep deletes the objects of expired
//! artifacts that no other artifact references, and nothing else.

mod support;

use std::sync::Arc;
use std::time::Duration;

use object_store::path::Path as ObjectPath;
use object_store::ObjectStoreExt;
use support::s3::S3Server;
use tokio::io::AsyncReadExt;
use valkyrie_control_plane::artifacts::s3::PART_BYTES;
use valkyrie_control_plane::artifacts::{now_ms, ArtifactStore, S3Blobs, StoreConfig};

fn sha256(data: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
}

async fn put(store: &Arc<ArtifactStore>, job: u64, name: &str, data: &[u8], expire_in: Duration) -> String {
    let mut upload = store.begin_upload().await.unwrap();
    for (i, chunk) in data.chunks(1 << 20).enumerate() {
        upload.write((i << 20) as u64, chunk).await.unwrap();
    }
    let sha = sha256(data);
    store
        .commit(upload, job, name, data.len() as u64, &sha, expire_in)
        .await
        .unwrap();
    sha
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_s3_backend_stores_once_streams_parts_and_sweeps_what_expired() {
    let s3 = S3Server::start();
    s3.create_bucket("store").await;
    let dir = tempfile::tempdir().unwrap();
    let blobs = Arc::new(S3Blobs::new(s3.bucket("store"), "s3://store/p/").unwrap());
    let store = Arc::new(
        ArtifactStore::open_with_blobs(dir.path(), blobs, StoreConfig::default(), Default::default())
            .await
            .unwrap(),
    );
    assert_eq!(store.blob_location(), "s3://store/p");

    // Two parts and a bit.
    let big: Vec<u8> = (0..(2 * PART_BYTES + 12345) as u32)
        .map(|i| (i % 251) as u8)
        .collect();
    let big_sha = put(&store, 1, "big", &big, Duration::from_secs(3600)).await;
    assert_eq!(
        put(&store, 2, "same", &big, Duration::from_millis(1)).await,
        big_sha
    );
    let small_sha = put(&store, 3, "small", b"short-lived", Duration::from_millis(1)).await;

    let big_key = format!("p/blobs/{}/{big_sha}", &big_sha[..2]);
    let small_key = format!("p/blobs/{}/{small_sha}", &small_sha[..2]);
    let mut objects = s3.objects("store", "p").await;
    objects.sort();
    let mut expected = vec![(big_key.clone(), big.len() as u64), (small_key, 11)];
    expected.sort();
    assert_eq!(objects, expected, "identical content is one object");
    let head = s3
        .bucket("store")
        .head(&ObjectPath::from(big_key.as_str()))
        .await
        .unwrap();
    assert!(
        head.e_tag
            .as_deref()
            .unwrap_or_default()
            .trim_matches('"')
            .ends_with("-3"),
        "a multipart upload of 3 parts: {head:?}"
    );

    // Whole, streamed from the bucket; and a range across a part boundary.
    let (info, mut reader) = store.open_at(1, "big", 0).await.unwrap();
    assert_eq!(info.size, big.len() as u64);
    let mut back = Vec::new();
    reader.read_to_end(&mut back).await.unwrap();
    assert!(back == big, "the blob reads back as it was stored");
    let at = PART_BYTES as u64 - 5;
    let (_, range) = store.read_range(1, "big", at, 10).await.unwrap();
    assert_eq!(&range[..], &big[at as usize..at as usize + 10]);

    // Expired: `same` and `small`; `small`'s object goes, `big`'s stays
    // (job 1 still references it).
    assert_eq!(store.sweep(now_ms() + 1000).await.unwrap(), (2, 1));
    assert_eq!(s3.objects("store", "p").await, vec![(big_key, big.len() as u64)]);
    assert_eq!(store.list(1).unwrap().len(), 1);
    assert!(store.list(2).unwrap().is_empty());
    assert_eq!(store.stored_bytes().await.unwrap(), big.len() as u64);
}
