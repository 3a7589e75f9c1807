#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

fn new_storage(quota: u64) -> (tempfile::TempDir, InstanceStorage) {
    let root = tempfile::tempdir().unwrap();
    let storage = InstanceStorage::create(root.path().join("instance"), quota).unwrap();
    (root, storage)
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            out.extend(files_under(&entry.path()));
        } else {
            out.push(entry.path());
        }
    }
    out
}

/// The single value file in the storage directory.
fn only_file(storage: &InstanceStorage) -> PathBuf {
    let files = files_under(storage.dir());
    assert_eq!(files.len(), 1, "expected exactly one file: {files:?}");
    files.into_iter().next().unwrap()
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn put_get_delete_and_keys_round_trip() {
    let (_root, mut s) = new_storage(1024);
    assert_eq!(s.get("a").unwrap(), None);
    s.put("b", b"two").unwrap();
    s.put("a", b"one").unwrap();
    s.put("empty", b"").unwrap();
    assert_eq!(s.get("a").unwrap().as_deref(), Some(&b"one"[..]));
    assert_eq!(s.get("b").unwrap().as_deref(), Some(&b"two"[..]));
    assert_eq!(s.get("empty").unwrap().as_deref(), Some(&b""[..]));
    assert_eq!(s.keys(), ["a", "b", "empty"]);
    assert_eq!(s.used(), 1 + 3 + 1 + 3 + 5 + 3 * ENTRY_OVERHEAD);
    assert_eq!(s.quota(), 1024);

    assert!(s.delete("a").unwrap());
    assert!(!s.delete("a").unwrap());
    assert_eq!(s.get("a").unwrap(), None);
    assert_eq!(s.keys(), ["b", "empty"]);
    assert_eq!(s.used(), 1 + 3 + 5 + 2 * ENTRY_OVERHEAD);
    assert_eq!(
        files_under(s.dir()).len(),
        2,
        "deleted value's file is removed"
    );
}

#[test]
fn replacing_a_value_adjusts_usage_and_removes_the_old_file() {
    let (_root, mut s) = new_storage(1024);
    s.put("key", &[1; 100]).unwrap();
    assert_eq!(s.used(), 103 + ENTRY_OVERHEAD);
    s.put("key", &[2; 10]).unwrap();
    assert_eq!(s.used(), 13 + ENTRY_OVERHEAD);
    assert_eq!(s.get("key").unwrap(), Some(vec![2; 10]));
    s.put("key", &[3; 500]).unwrap();
    assert_eq!(s.used(), 503 + ENTRY_OVERHEAD);
    assert_eq!(s.get("key").unwrap(), Some(vec![3; 500]));
    assert_eq!(files_under(s.dir()).len(), 1);
}

#[test]
fn a_value_may_fill_the_quota_exactly() {
    let (_root, mut s) = new_storage(10 + ENTRY_OVERHEAD);
    s.put("k", &[0; 9]).unwrap();
    assert_eq!(s.used(), 10 + ENTRY_OVERHEAD);
    // Replacing counts only the other entries, so an equal-sized
    // replacement fits.
    s.put("k", &[1; 9]).unwrap();
    assert_eq!(s.get("k").unwrap(), Some(vec![1; 9]));
}

#[test]
fn exceeding_the_quota_fails_and_leaves_the_old_value_and_usage_unchanged() {
    let (_root, mut s) = new_storage(1024);
    s.put("other", &[7; 100]).unwrap();
    s.put("key", b"old").unwrap();
    let used = s.used();
    let files = files_under(s.dir()).len();

    let err = s.put("key", &[0; 2045]).unwrap_err();
    match err {
        StorageError::QuotaExceeded {
            needed,
            used: in_use,
            quota,
        } => {
            assert_eq!(needed, 2048 + ENTRY_OVERHEAD);
            assert_eq!(
                in_use,
                105 + ENTRY_OVERHEAD,
                "the value being replaced is not counted"
            );
            assert_eq!(quota, 1024);
        }
        other => panic!("expected QuotaExceeded, got {other:?}"),
    }
    assert_eq!(s.get("key").unwrap().as_deref(), Some(&b"old"[..]));
    assert_eq!(s.used(), used);
    assert_eq!(files_under(s.dir()).len(), files);

    let err = s.put("new", &[0; 1000]).unwrap_err();
    assert!(matches!(err, StorageError::QuotaExceeded { .. }));
    assert_eq!(s.get("new").unwrap(), None);
    assert_eq!(s.keys(), ["key", "other"]);
}

#[test]
fn quota_error_reads_as_a_sentence() {
    let (_root, mut s) = new_storage(1024);
    s.put("x", &[0; 935]).unwrap();
    let err = s.put("y", &[0; 1983]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "storage quota exceeded: this put needs 2048 bytes but 1000 of 1024 bytes are already in use"
    );
}

#[test]
fn empty_and_overlong_keys_are_refused_with_a_clear_message() {
    let (_root, mut s) = new_storage(4096);
    let err = s.put("", b"v").unwrap_err();
    assert!(matches!(err, StorageError::InvalidKey(_)));
    assert_eq!(
        err.to_string(),
        "invalid storage key: a key must not be empty"
    );

    let long = "é".repeat(129); // 258 bytes, 129 characters
    let err = s.put(&long, b"v").unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid storage key: a key may be at most 256 bytes of UTF-8, this one is 258 bytes"
    );
    assert!(matches!(s.get(&long), Err(StorageError::InvalidKey(_))));
    assert!(matches!(s.delete(""), Err(StorageError::InvalidKey(_))));
    assert_eq!(s.used(), 0);

    let max = "k".repeat(MAX_KEY_BYTES);
    s.put(&max, b"v").unwrap();
    assert_eq!(s.get(&max).unwrap().as_deref(), Some(&b"v"[..]));
}

#[test]
fn what_is_on_disk_is_not_plaintext() {
    let (_root, mut s) = new_storage(1 << 20);
    let key = "RECOGNISABLE-KEY-NAME";
    let value = b"TOP-SECRET-PLAINTEXT".repeat(100);
    s.put(key, &value).unwrap();
    s.put("second-RECOGNISABLE-KEY-NAME", &value).unwrap();
    assert_eq!(s.get(key).unwrap(), Some(value));

    let files = files_under(s.dir());
    assert_eq!(files.len(), 2);
    for file in files {
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            !name.contains("RECOGNISABLE"),
            "file named after a key: {name}"
        );
        let data = fs::read(&file).unwrap();
        assert!(!contains(&data, b"TOP-SECRET"), "plaintext value in {name}");
        assert!(
            !contains(&data, b"RECOGNISABLE-KEY"),
            "plaintext key in {name}"
        );
    }
}

#[test]
fn after_drop_the_directory_is_gone() {
    let (root, mut s) = new_storage(1024);
    s.put("a", b"1").unwrap();
    s.put("b", b"2").unwrap();
    let dir = s.dir().to_path_buf();
    assert!(dir.is_dir());
    drop(s);
    assert!(!dir.exists());
    assert!(
        root.path().is_dir(),
        "only the instance directory is removed"
    );
}

#[test]
fn drop_never_panics_when_the_directory_is_already_gone() {
    let (_root, s) = new_storage(1024);
    fs::remove_dir_all(s.dir()).unwrap();
    drop(s);
}

#[test]
fn create_refuses_an_existing_directory_and_makes_missing_parents() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("a").join("b").join("instance");
    let s = InstanceStorage::create(dir.clone(), 10).unwrap();
    assert!(dir.is_dir());

    let err = InstanceStorage::create(dir.clone(), 10).unwrap_err();
    assert!(matches!(err, StorageError::Io { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("storage I/O error while creating the storage directory: "),
        "{err}"
    );
    assert!(
        dir.is_dir(),
        "the failed create did not touch the live storage"
    );
    drop(s);
}

#[cfg(unix)]
#[test]
fn directories_are_0700_and_files_are_0600() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let parent = root.path().join("storage-root");
    let mut s = InstanceStorage::create(parent.join("instance"), 100).unwrap();
    s.put("k", b"v").unwrap();
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&parent), 0o700);
    assert_eq!(mode(s.dir()), 0o700);
    assert_eq!(mode(&only_file(&s)), 0o600);
}

#[test]
fn a_tampered_file_makes_get_fail_with_corrupt() {
    let (_root, mut s) = new_storage(1024);
    s.put("key", b"some value worth protecting").unwrap();
    let file = only_file(&s);
    let original = fs::read(&file).unwrap();

    // Flip one bit anywhere: nonce, ciphertext or tag.
    for i in [0, NONCE_LEN, original.len() - 1] {
        let mut data = original.clone();
        data[i] ^= 0x01;
        fs::write(&file, &data).unwrap();
        let err = s.get("key").unwrap_err();
        assert!(matches!(err, StorageError::Corrupt(_)), "byte {i}: {err:?}");
    }

    // Truncated or extended files are rejected too.
    fs::write(&file, &original[..original.len() - 1]).unwrap();
    assert!(matches!(s.get("key"), Err(StorageError::Corrupt(_))));
    let mut longer = original.clone();
    longer.push(0);
    fs::write(&file, &longer).unwrap();
    assert!(matches!(s.get("key"), Err(StorageError::Corrupt(_))));

    fs::remove_file(&file).unwrap();
    let err = s.get("key").unwrap_err();
    assert!(matches!(err, StorageError::Corrupt(_)));
    assert_eq!(
        err.to_string(),
        "stored value for key \"key\" is corrupt (its file is missing): its file was modified or replaced on disk"
    );

    fs::write(&file, &original).unwrap();
    assert_eq!(
        s.get("key").unwrap().as_deref(),
        Some(&b"some value worth protecting"[..])
    );
}

#[test]
fn files_swapped_between_keys_are_rejected() {
    let (_root, mut s) = new_storage(1024);
    s.put("a", b"value of a").unwrap();
    let file_a = files_under(s.dir()).pop().unwrap();
    s.put("b", b"value of b").unwrap();
    let file_b = files_under(s.dir())
        .into_iter()
        .find(|f| *f != file_a)
        .unwrap();

    let data_a = fs::read(&file_a).unwrap();
    let data_b = fs::read(&file_b).unwrap();
    fs::write(&file_a, &data_b).unwrap();
    fs::write(&file_b, &data_a).unwrap();
    assert!(matches!(s.get("a"), Err(StorageError::Corrupt(_))));
    assert!(matches!(s.get("b"), Err(StorageError::Corrupt(_))));
}

#[test]
fn a_file_is_bound_to_its_key_even_under_its_own_serial_number() {
    let (_root, mut s) = new_storage(1024);
    s.put("a", b"value of a").unwrap();
    s.put("b", b"value of b").unwrap();
    // Point "a" at b's file (as if the index had been confused): the file
    // number in the associated data matches, only the key does not.
    let b = s.index["b"];
    s.index.insert("a".to_owned(), b);
    assert!(matches!(s.get("a"), Err(StorageError::Corrupt(_))));
    assert_eq!(s.get("b").unwrap().as_deref(), Some(&b"value of b"[..]));
}

#[test]
fn an_old_version_of_a_value_cannot_be_replayed() {
    let (_root, mut s) = new_storage(1024);
    s.put("balance", b"100").unwrap();
    let old = fs::read(only_file(&s)).unwrap();
    s.put("balance", b"000").unwrap();
    fs::write(only_file(&s), &old).unwrap();
    assert!(matches!(s.get("balance"), Err(StorageError::Corrupt(_))));
}

#[test]
fn two_instances_are_independent_and_each_key_decrypts_only_its_own_data() {
    let root = tempfile::tempdir().unwrap();
    let mut one = InstanceStorage::create(root.path().join("one"), 1024).unwrap();
    let mut two = InstanceStorage::create(root.path().join("two"), 1024).unwrap();

    // Same key, same serial number: only the encryption key differs.
    one.put("k", b"one's secret").unwrap();
    two.put("k", b"two's secret").unwrap();
    assert_eq!(one.get("k").unwrap().as_deref(), Some(&b"one's secret"[..]));
    assert_eq!(two.get("k").unwrap().as_deref(), Some(&b"two's secret"[..]));

    one.put("only-in-one", b"x").unwrap();
    assert_eq!(two.get("only-in-one").unwrap(), None);
    assert_eq!(two.keys(), ["k"]);
    assert!(two.delete("k").unwrap());
    assert_eq!(one.get("k").unwrap().as_deref(), Some(&b"one's secret"[..]));
    two.put("k", b"two's secret").unwrap();

    // A file copied from one instance's directory into the other's is
    // rejected, even under the name and serial number it expects.
    let file_one = one.dir().join(format!("{:016x}", 0));
    let file_two = only_file(&two);
    fs::copy(&file_one, &file_two).unwrap();
    assert!(matches!(two.get("k"), Err(StorageError::Corrupt(_))));

    let two_dir = two.dir().to_path_buf();
    drop(two);
    assert!(!two_dir.exists());
    assert_eq!(one.get("k").unwrap().as_deref(), Some(&b"one's secret"[..]));
}

#[test]
fn remove_leftovers_removes_directories_and_counts_them() {
    let root = tempfile::tempdir().unwrap();
    for name in ["a", "b", "c"] {
        let mut s = InstanceStorage::create(root.path().join(name), 100).unwrap();
        s.put("k", b"v").unwrap();
        // Simulate a crash: the directory outlives the key.
        std::mem::forget(s);
    }
    fs::write(root.path().join("not-a-dir"), b"x").unwrap();

    assert_eq!(remove_leftovers(root.path()).unwrap(), 3);
    let remaining: Vec<_> = fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(remaining, ["not-a-dir"]);
    assert_eq!(remove_leftovers(root.path()).unwrap(), 0);
}

#[test]
fn remove_leftovers_of_a_missing_root_removes_nothing() {
    let root = tempfile::tempdir().unwrap();
    assert_eq!(remove_leftovers(&root.path().join("missing")).unwrap(), 0);
}

#[cfg(unix)]
#[test]
fn remove_leftovers_does_not_follow_symlinks() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("precious"), b"keep me").unwrap();
    std::os::unix::fs::symlink(outside.path(), root.path().join("link")).unwrap();
    fs::create_dir(root.path().join("leftover")).unwrap();

    assert_eq!(remove_leftovers(root.path()).unwrap(), 1);
    assert!(outside.path().join("precious").exists());
}

#[test]
fn remove_dir_quietly_reports_whether_the_directory_is_gone() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("d");
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::write(dir.join("sub").join("f"), b"x").unwrap();
    assert!(remove_dir_quietly(&dir));
    assert!(!dir.exists());
    assert!(
        remove_dir_quietly(&dir),
        "a missing directory counts as gone"
    );
}

#[test]
fn debug_output_shows_no_keys() {
    let (_root, mut s) = new_storage(100);
    s.put("SECRET-KEY-NAME", b"SECRET-VALUE").unwrap();
    let debug = format!("{s:?}");
    assert!(!debug.contains("SECRET"), "{debug}");
    assert!(debug.contains("entries: 1"), "{debug}");
}

#[test]
fn instance_storage_is_send() {
    fn assert_send<T: Send>() {}
    assert_send::<InstanceStorage>();
}
