//! Reading a request body within its limits, undoing `Content-Encoding: gzip`,
//! and splitting the result into events.

use std::io::Read;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::error::RequestError;
use crate::decode::{self, DecodeOptions, Decoded};
use crate::pipeline::recycle;

/// Most bytes reserved up front for a body, whatever its `Content-Length` says;
/// the buffer grows as bytes actually arrive.
const INITIAL_RESERVE: usize = 1 << 20;

/// Hands each data frame of the body to `f`, refusing the body as soon as more
/// than `limit` bytes have arrived (chunked bodies included) or when it takes
/// longer than `timeout`.
///
/// # Errors
///
/// [`RequestError::BodyTooLarge`], [`RequestError::BodyTimeout`] or
/// [`RequestError::BodyRead`].
async fn each_frame(
    mut body: Incoming,
    limit: u64,
    timeout: Duration,
    mut f: impl FnMut(Bytes, u64),
) -> Result<(), RequestError> {
    let frames = async {
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame.map_err(RequestError::BodyRead)?.into_data() else {
                continue;
            };
            total += data.len() as u64;
            if total > limit {
                return Err(RequestError::BodyTooLarge { size: total, limit });
            }
            f(data, total);
        }
        Ok(())
    };
    tokio::time::timeout(timeout, frames)
        .await
        .map_err(|_| RequestError::BodyTimeout(timeout.as_secs()))?
}

/// Reads the whole body within `limit` bytes and `timeout`. A body that
/// arrives in one frame is returned without a copy.
///
/// # Errors
///
/// As [`each_frame`].
pub(crate) async fn read(
    body: Incoming,
    limit: u64,
    timeout: Duration,
    declared: Option<u64>,
) -> Result<Bytes, RequestError> {
    let mut first: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    each_frame(body, limit, timeout, |data, total| {
        if let Some(buf) = joined.as_mut() {
            reserve(buf, data.len());
            buf.extend_from_slice(&data);
        } else if let Some(previous) = first.take() {
            let hint = declared.unwrap_or(0).min(limit) as usize;
            // Room for the decoder's padding too, so that it validates the
            // body where it lies.
            let mut buf =
                recycle::take(hint.min(INITIAL_RESERVE).max(total as usize) + decode::BODY_PADDING);
            buf.extend_from_slice(&previous);
            buf.extend_from_slice(&data);
            joined = Some(buf);
        } else {
            first = Some(data);
        }
    })
    .await?;
    Ok(joined.map_or_else(|| first.unwrap_or_default(), BytesMut::freeze))
}

/// Makes room in `buf` for `more` bytes and the decoder's padding after
/// them, so that a body that outgrows its first buffer is still validated
/// where it lies. The buffer grows as a `Vec` does (at least doubling), paid
/// for by bytes that have arrived.
fn reserve(buf: &mut BytesMut, more: usize) {
    let needed = more + decode::BODY_PADDING;
    if buf.capacity() - buf.len() < needed {
        buf.reserve(needed);
    }
}

/// Reads the body and lets each frame go at once, so that nothing of it is
/// kept: at most `limit` bytes, within `timeout`. Returns whether the whole
/// body was read (the connection can then carry another request).
pub(crate) async fn discard(body: Incoming, limit: u64, timeout: Duration) -> bool {
    each_frame(body, limit, timeout, |_, _| {}).await.is_ok()
}

/// Undoes gzip (every member of a multi-member stream, RFC 1952 §2.2),
/// refusing output over `limit` bytes.
///
/// # Errors
///
/// [`RequestError::InvalidGzip`] or [`RequestError::DecodedTooLarge`].
fn gunzip(data: &[u8], limit: u64) -> Result<Bytes, RequestError> {
    let mut out = Vec::with_capacity(
        (data.len() * 4)
            .min(limit as usize)
            .min(INITIAL_RESERVE * 8)
            + decode::BODY_PADDING,
    );
    let mut decoder = flate2::read::MultiGzDecoder::new(data).take(limit + 1);
    decoder
        .read_to_end(&mut out)
        .map_err(RequestError::InvalidGzip)?;
    if out.len() as u64 > limit {
        return Err(RequestError::DecodedTooLarge { limit });
    }
    Ok(Bytes::from(out))
}

/// What the handler does with a body once it has been read: undoes gzip when
/// `gzip` is set (refusing more than `limit` bytes of output), refuses a body
/// over `limit` bytes, and decodes it with `opts`. Returns the body the events
/// are slices of, and the events. The fuzz targets call this to see exactly
/// what a request would.
///
/// # Errors
///
/// [`RequestError::InvalidGzip`], [`RequestError::DecodedTooLarge`] or
/// [`RequestError::Decode`]; nothing is returned of a refused body.
pub fn unpack(
    wire: Bytes,
    gzip: bool,
    limit: u64,
    opts: &DecodeOptions,
) -> Result<(Bytes, Decoded), RequestError> {
    let body = if gzip { gunzip(&wire, limit)? } else { wire };
    if body.len() as u64 > limit {
        return Err(RequestError::DecodedTooLarge { limit });
    }
    let (body, decoded) = decode::decode_owned(body, opts);
    Ok((body, decoded?))
}
