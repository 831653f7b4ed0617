//! Reused buffers for what the clients move in bulk: fetch response frames
//! and decompressed batches the consumer receives, and the producer's
//! compressed batches and their scratch buffers, megabytes each.
//!
//! A fresh multi-megabyte allocation per fetch costs more than reading it:
//! the allocator maps it, the kernel faults every page in, and freeing it
//! unmaps it again (a quarter of the consumer's CPU at 1 KB records, lz4,
//! six partitions). The buffers here go back to a small process-wide pool
//! once the last [`Bytes`] over them (the records an application still
//! borrows) is dropped, and the next fetch writes into pages already mapped.

use std::sync::Mutex;

use bytes::Bytes;

/// Buffers smaller than this are not worth pooling.
pub(crate) const MIN_POOLED: usize = 64 * 1024;
/// Buffers kept at most.
const MAX_KEPT: usize = 16;
/// Bytes of capacity kept at most.
const MAX_KEPT_BYTES: usize = 64 * 1024 * 1024;

static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

fn lock() -> std::sync::MutexGuard<'static, Vec<Vec<u8>>> {
    POOL.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An empty buffer with room for at least `len` bytes: a pooled one when
/// one is large enough, else a new one.
pub(crate) fn take(len: usize) -> Vec<u8> {
    if len >= MIN_POOLED {
        let mut pool = lock();
        // The smallest that fits: large buffers stay for large frames.
        let best = pool
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        if let Some(i) = best {
            return pool.swap_remove(i);
        }
    }
    Vec::with_capacity(len)
}

/// Gives a buffer back (dropped when the pool is full or it is small).
pub(crate) fn give(mut buf: Vec<u8>) {
    if buf.capacity() < MIN_POOLED {
        return;
    }
    buf.clear();
    let mut pool = lock();
    let kept: usize = pool.iter().map(Vec::capacity).sum();
    if pool.len() < MAX_KEPT && kept + buf.capacity() <= MAX_KEPT_BYTES {
        pool.push(buf);
    }
}

/// Owns a pooled buffer under a [`Bytes`]; gives it back when dropped.
struct Pooled(Vec<u8>);

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        give(std::mem::take(&mut self.0));
    }
}

/// `buf` as [`Bytes`] that return it to the pool once every slice of them
/// is dropped.
pub(crate) fn bytes(buf: Vec<u8>) -> Bytes {
    if buf.capacity() < MIN_POOLED {
        return Bytes::from(buf);
    }
    Bytes::from_owner(Pooled(buf))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_comes_back_once_its_last_slice_is_dropped() {
        // Other tests share the pool: look for this buffer by its address.
        let mut buf = take(3 * MIN_POOLED + 17);
        buf.extend_from_slice(&[1, 2, 3]);
        let at = buf.as_ptr();
        let whole = bytes(buf);
        let part = whole.slice(1..2);
        drop(whole);
        assert!(
            !lock().iter().any(|b| b.as_ptr() == at),
            "back while sliced"
        );
        assert_eq!(&part[..], &[2]);
        drop(part);
        assert!(lock().iter().any(|b| b.as_ptr() == at && b.is_empty()));
        // Small buffers are plain Bytes.
        assert!(!lock().iter().any(|b| b.capacity() < MIN_POOLED));
        let small = bytes(vec![0; 10]);
        drop(small);
        assert!(!lock().iter().any(|b| b.capacity() < MIN_POOLED));
    }
}
