//! The gRPC codec of every sealfs service: prost's, except that each message is encoded into
//! room reserved for its whole length first. Prost writes field by field into tonic's growing
//! buffer; a large data field filled it exactly, so the next field's first byte moved the whole
//! message to a new allocation (encoding a 1 MiB chunk write copied its data twice).

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::Status;
use tonic_prost::ProstDecoder;

/// The codec the generated clients and servers use (set in build.rs).
#[derive(Debug)]
pub struct SealCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SealCodec<T, U> {
    fn default() -> Self {
        SealCodec(PhantomData)
    }
}

impl<T, U> Codec for SealCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = SealEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        SealEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::default()
    }
}

/// Encodes a message into one allocation of its encoded length.
#[derive(Debug)]
pub struct SealEncoder<T>(PhantomData<T>);

impl<T: Message> Encoder for SealEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        // The room is reserved, so the length check `encode` would repeat cannot fail.
        item.encode_raw(buf);
        Ok(())
    }
}
