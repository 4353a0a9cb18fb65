//! Large request-body buffers given back by batches once every sink is done
//! with them, and handed out again for the next bodies.
//!
//! The allocator maps a buffer of an API server's batch (0.4 to 2 MB) afresh
//! for each request and unmaps it when freed, so that every page of every
//! body was a page fault. Kept here, the pages stay mapped. The pool is
//! bounded in bytes; what does not fit goes back to the allocator.

use std::sync::Mutex;

use bytes::BytesMut;

/// Buffers smaller than this come from the allocator's heap cheaply and are
/// not kept.
pub(crate) const MIN_BUFFER_BYTES: usize = 128 << 10;

/// Larger buffers are rare and not kept.
const MAX_BUFFER_BYTES: usize = 8 << 20;

/// Most bytes of buffer capacity kept at once.
const MAX_POOL_BYTES: usize = 32 << 20;

/// New buffers are made a multiple of this, so that a buffer fits the next
/// bodies of about the same size.
const ROUND_BYTES: usize = 64 << 10;

struct Pool {
    buffers: Vec<BytesMut>,
    bytes: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    buffers: Vec::new(),
    bytes: 0,
});

fn pool() -> std::sync::MutexGuard<'static, Pool> {
    POOL.lock().unwrap_or_else(|p| p.into_inner())
}

/// An empty buffer with room for at least `capacity` bytes: a kept one when
/// one is large enough, else a new one (rounded up when it is large).
pub(crate) fn take(capacity: usize) -> BytesMut {
    if capacity < MIN_BUFFER_BYTES {
        return BytesMut::with_capacity(capacity);
    }
    {
        let mut pool = pool();
        // The smallest that fits, so that large buffers stay for large bodies.
        let best = pool
            .buffers
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= capacity)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        if let Some(i) = best {
            let buf = pool.buffers.swap_remove(i);
            pool.bytes -= buf.capacity();
            return buf;
        }
    }
    BytesMut::with_capacity(capacity.div_ceil(ROUND_BYTES) * ROUND_BYTES)
}

/// Keeps `buf` for a later body, if it is large enough to be worth it and
/// the pool has room; otherwise frees it.
pub(crate) fn give_back(mut buf: BytesMut) {
    let capacity = buf.capacity();
    if !(MIN_BUFFER_BYTES..=MAX_BUFFER_BYTES).contains(&capacity) {
        return;
    }
    buf.clear();
    let mut pool = pool();
    if pool.bytes + capacity > MAX_POOL_BYTES {
        return;
    }
    pool.bytes += capacity;
    pool.buffers.push(buf);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_given_back_is_handed_out_again_for_a_body_it_fits() {
        let mut buf = take(300 << 10);
        assert!(buf.capacity() >= 300 << 10);
        buf.extend_from_slice(b"old bytes");
        let ptr = buf.as_ptr();
        give_back(buf);
        // Other tests share the pool: look for this buffer among what a
        // few takes hand out.
        let taken: Vec<BytesMut> = (0..4).map(|_| take(290 << 10)).collect();
        let again = taken.iter().find(|b| b.as_ptr() == ptr).expect("reused");
        assert!(again.is_empty(), "handed out empty");
        // Small and huge buffers are not kept.
        give_back(BytesMut::with_capacity(1 << 10));
        give_back(BytesMut::with_capacity(MAX_BUFFER_BYTES + 1));
        assert!(pool().bytes <= MAX_POOL_BYTES);
        assert!(
            pool()
                .buffers
                .iter()
                .all(|b| b.capacity() >= MIN_BUFFER_BYTES)
        );
    }
}
