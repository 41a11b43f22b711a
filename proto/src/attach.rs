//! Bulk data beside a gRPC message instead of inside it. A chunk's bytes are most of what a
//! chunk write or read moves, and encoding them into a protobuf message (and tonic decoding them
//! out of its buffer) copied every byte once more on each side of each hop. On a framed
//! connection that takes attachments ([`crate::framed`], version 2) the bytes travel after the
//! message as they are; on any other transport (HTTP/2, TLS, a version 1 peer) they are appended
//! to the encoded message as the very protobuf field they stand for, so the receiver decodes the
//! usual message and no call depends on which transport carried it.
//!
//! The sender leaves the message's data field empty and puts an [`Attachment`] in the request's
//! (or reply's) extensions; the receiver takes the data with [`take`], which falls back to the
//! field when nothing came beside it. A reply is attached only when the request says its
//! connection takes it ([`RepliesTakeAttachments`]), since tonic's HTTP/2 server would drop it.

use bytes::{BufMut, Bytes, BytesMut};
use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
use tonic::Status;

/// Data to send beside a message whose `field` (a path of field numbers from the top-level
/// message down through embedded messages to a `bytes` field) was left empty.
#[derive(Clone, Debug)]
pub struct Attachment {
    field: &'static [u32],
    data: Bytes,
}

/// The data that arrived beside a message (put in its extensions by the framed transport).
#[derive(Clone, Debug)]
pub struct Attached(pub Bytes);

/// In a request's extensions: its connection carries an attachment on the reply too.
#[derive(Clone, Copy, Debug)]
pub struct RepliesTakeAttachments;

/// `WriteChunkRequest.data`.
pub const WRITE_CHUNK_DATA: &[u32] = &[4];
/// `ReplicateChunkRequest.write` (5) `.data` (2).
pub const REPLICATE_CHUNK_DATA: &[u32] = &[5, 2];
/// `ReadChunkReply.data`.
pub const READ_CHUNK_DATA: &[u32] = &[1];

/// A gRPC message header: compression flag and `u32` big-endian length.
const GRPC_HEADER: usize = 5;

impl Attachment {
    /// `data` for the (possibly nested) bytes field `field`.
    pub fn new(field: &'static [u32], data: Bytes) -> Attachment {
        debug_assert!(!field.is_empty());
        Attachment { field, data }
    }

    /// The attached bytes.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// The protobuf encoding of the field path around the data, without the data: each level's
    /// key and length, outermost first.
    fn field_head(&self) -> BytesMut {
        // Lengths from the innermost level out: each is its key, its length's varint and what
        // it holds.
        let mut lens = Vec::with_capacity(self.field.len());
        let mut inner = self.data.len();
        for &f in self.field.iter().rev() {
            lens.push(inner);
            inner += key_len(f) + encoded_len_varint(inner as u64);
        }
        let mut head = BytesMut::with_capacity(inner - self.data.len());
        for (&f, &len) in self.field.iter().zip(lens.iter().rev()) {
            encode_key(f, WireType::LengthDelimited, &mut head);
            encode_varint(len as u64, &mut head);
        }
        head
    }

    /// The encoded gRPC body `body` (one uncompressed message with its 5-byte header) with the
    /// data appended as its field: protobuf takes the last value of a field and merges repeated
    /// embedded messages, so the message decodes as if the data had been in it all along.
    pub fn inline_into(&self, body: &[u8]) -> Result<Bytes, Status> {
        if body.len() < GRPC_HEADER || body[0] != 0 {
            return Err(Status::internal("attachment: not one uncompressed gRPC message"));
        }
        let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
        if len != body.len() - GRPC_HEADER {
            return Err(Status::internal("attachment: not one gRPC message"));
        }
        let head = self.field_head();
        let total = len + head.len() + self.data.len();
        let total = u32::try_from(total).map_err(|_| Status::resource_exhausted("attachment too large"))?;
        let mut out = BytesMut::with_capacity(GRPC_HEADER + total as usize);
        out.put_u8(0);
        out.put_u32(total);
        out.put_slice(&body[GRPC_HEADER..]);
        out.put_slice(&head);
        out.put_slice(&self.data);
        Ok(out.freeze())
    }
}

/// A request of `msg` with `data` beside it for its bytes field `field` (left empty in `msg`).
pub fn request<T>(msg: T, field: &'static [u32], data: Bytes) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.extensions_mut().insert(Attachment::new(field, data));
    r
}

/// The reply `msg` to a request whose extensions were `req`: `data` goes beside it (for its
/// bytes field `field`) when the request's connection takes that, else into it with `put`.
pub fn reply<T>(
    req: &tonic::Extensions,
    mut msg: T,
    field: &'static [u32],
    data: Bytes,
    put: impl FnOnce(&mut T, Bytes),
) -> tonic::Response<T> {
    if req.get::<RepliesTakeAttachments>().is_none() {
        put(&mut msg, data);
        return tonic::Response::new(msg);
    }
    let mut r = tonic::Response::new(msg);
    r.extensions_mut().insert(Attachment::new(field, data));
    r
}

/// The data that came beside a message, if any (taken out of `ext`): callers use it in place of
/// the message's field, which the sender left empty.
pub fn take(ext: &mut tonic::Extensions) -> Option<Bytes> {
    ext.remove::<Attached>().map(|a| a.0)
}

/// Put the data that came beside a message, if any, into its field `field` (taken out of `ext`).
pub fn take_into(ext: &mut tonic::Extensions, field: &mut Bytes) {
    if let Some(d) = take(ext) {
        *field = d;
    }
}

/// A call's encoded `body` and what goes after it on a transport that carries data `beside`
/// (a version 2 frame); anywhere else the attachment is inlined into the body as its field.
pub fn place(body: Bytes, attachment: Option<Attachment>, beside: bool) -> Result<(Bytes, Bytes), Status> {
    match attachment {
        None => Ok((body, Bytes::new())),
        Some(a) if beside => Ok((body, a.data)),
        Some(a) => Ok((a.inline_into(&body)?, Bytes::new())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;
    use prost::Message;

    fn grpc_body(m: &impl Message) -> Vec<u8> {
        let mut out = vec![0u8];
        out.extend_from_slice(&(m.encoded_len() as u32).to_be_bytes());
        m.encode(&mut out).unwrap();
        out
    }

    fn decode<M: Message + Default>(body: &[u8]) -> M {
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        assert_eq!(len, body.len() - 5);
        M::decode(&body[5..]).unwrap()
    }

    #[test]
    fn inlined_data_decodes_as_the_field_at_every_size() {
        // Sizes around the varint length boundaries, and empty data.
        for n in [0usize, 1, 127, 128, 16383, 16384, (1 << 20) + 3] {
            let data = Bytes::from((0..n).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>());
            let full = pb::WriteChunkRequest {
                ctx: Some(pb::Ctx {
                    epoch: 9,
                    ..Default::default()
                }),
                chunk: Some(pb::ChunkId { ino: 5, index: 2 }),
                offset: 4096,
                data: data.clone(),
                stable: true,
                chunk_size: 4 << 20,
                // A piece table before the data: the appended field leaves it as it is.
                pieces: vec![pb::ChunkPiece { offset: 7, len: 1 }],
            };
            let empty = pb::WriteChunkRequest {
                data: Bytes::new(),
                ..full.clone()
            };
            let body = Attachment::new(WRITE_CHUNK_DATA, data.clone())
                .inline_into(&grpc_body(&empty))
                .unwrap();
            assert_eq!(decode::<pb::WriteChunkRequest>(&body), full, "{n} bytes");

            // Nested: ReplicateChunkRequest.op = write (5) -> ChunkWrite.data (2); the
            // appended embedded message merges into the one already there.
            let nested = |data: Bytes| pb::ReplicateChunkRequest {
                sender: 3,
                partition: 7,
                chunk: Some(pb::ChunkId { ino: 5, index: 2 }),
                op: Some(pb::replicate_chunk_request::Op::Write(pb::ChunkWrite {
                    offset: 8192,
                    data,
                    stable: true,
                    pieces: vec![
                        pb::ChunkPiece { offset: 0, len: 9 },
                        pb::ChunkPiece { offset: 99, len: 1 },
                    ],
                })),
                ..Default::default()
            };
            let body = Attachment::new(REPLICATE_CHUNK_DATA, data.clone())
                .inline_into(&grpc_body(&nested(Bytes::new())))
                .unwrap();
            assert_eq!(decode::<pb::ReplicateChunkRequest>(&body), nested(data.clone()));

            let body = Attachment::new(READ_CHUNK_DATA, data.clone())
                .inline_into(&grpc_body(&pb::ReadChunkReply::default()))
                .unwrap();
            assert_eq!(decode::<pb::ReadChunkReply>(&body).data, data);
        }
    }

    #[test]
    fn inlining_refuses_what_is_not_one_plain_message() {
        let a = Attachment::new(&[1], Bytes::from_static(b"x"));
        assert!(a.inline_into(&[]).is_err());
        assert!(a.inline_into(&[1, 0, 0, 0, 0]).is_err(), "compressed");
        assert!(a.inline_into(&[0, 0, 0, 0, 2, 8]).is_err(), "length does not match");
        assert!(a.inline_into(&[0, 0, 0, 0, 0]).is_ok());
    }

    #[test]
    fn replies_attach_only_where_the_connection_takes_it() {
        let data = Bytes::from_static(b"chunk bytes");
        let put = |m: &mut pb::ReadChunkReply, d| m.data = d;
        let plain = tonic::Extensions::new();
        let r = reply(&plain, pb::ReadChunkReply::default(), &[1], data.clone(), put);
        assert!(r.extensions().get::<Attachment>().is_none());
        assert_eq!(r.get_ref().data, data);

        let mut takes = tonic::Extensions::new();
        takes.insert(RepliesTakeAttachments);
        let r = reply(&takes, pb::ReadChunkReply::default(), &[1], data.clone(), put);
        assert!(r.get_ref().data.is_empty());
        assert_eq!(r.extensions().get::<Attachment>().unwrap().data(), &data);

        let mut ext = tonic::Extensions::new();
        assert!(take(&mut ext).is_none());
        ext.insert(Attached(data.clone()));
        assert_eq!(take(&mut ext), Some(data));
        assert!(take(&mut ext).is_none());
    }
}
