//! Several writes to one chunk in one message (`WriteChunkPieces`, `ReplicateChunkPieces`): the
//! data of all of them one after another, and a table of where each goes. The sender builds the
//! table with [`piece_table`]; a receiver checks it against the data and splits the data with
//! [`split_pieces`] before anything is written.

use bytes::Bytes;
use sealfs_core::config::MAX_CHUNK_PIECES;
use sealfs_core::{FsError, FsResult};

use crate::pb;

/// The writes a chunk-write message carries: `data` at `offset` when `pieces` is empty, else
/// each piece's share of `data` (they tile it, in order) at its own offset. Refused when the
/// pieces do not add up to the data, are too many, or any write would end past `limit`.
pub fn split_pieces(offset: u32, data: &Bytes, pieces: &[pb::ChunkPiece], limit: u64) -> FsResult<Vec<(u64, Bytes)>> {
    if pieces.is_empty() {
        let end = u64::from(offset) + data.len() as u64;
        if end > limit {
            return Err(FsError::Invalid(format!(
                "chunk write of {} bytes at {offset} ends past {limit}",
                data.len()
            )));
        }
        return Ok(vec![(u64::from(offset), data.clone())]);
    }
    if pieces.len() > MAX_CHUNK_PIECES {
        return Err(FsError::Invalid(format!(
            "{} pieces in one chunk write, more than {MAX_CHUNK_PIECES}",
            pieces.len()
        )));
    }
    let mut out = Vec::with_capacity(pieces.len());
    let mut at = 0usize;
    for piece in pieces {
        let len = piece.len as usize;
        let end = u64::from(piece.offset) + u64::from(piece.len);
        if len == 0 || end > limit || at + len > data.len() {
            return Err(FsError::Invalid(format!(
                "chunk write piece of {len} bytes at {} does not fit (data {} bytes, limit {limit})",
                piece.offset,
                data.len()
            )));
        }
        out.push((u64::from(piece.offset), data.slice(at..at + len)));
        at += len;
    }
    if at != data.len() {
        return Err(FsError::Invalid(format!(
            "chunk write pieces cover {at} of its {} bytes",
            data.len()
        )));
    }
    Ok(out)
}

/// The piece table of `pieces` sent one after another: a piece that starts where the one
/// before it ended joins it, so small sequential writes become one write at the node.
pub fn piece_table(pieces: &[(u32, Bytes)]) -> Vec<pb::ChunkPiece> {
    let mut table: Vec<pb::ChunkPiece> = Vec::with_capacity(pieces.len());
    for (offset, d) in pieces {
        let len = d.len() as u32;
        match table.last_mut() {
            Some(last) if last.offset.checked_add(last.len) == Some(*offset) => last.len += len,
            _ => table.push(pb::ChunkPiece { offset: *offset, len }),
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_write_pieces_must_tile_the_data_and_fit_the_chunk() {
        let data = Bytes::from((0..100u8).collect::<Vec<_>>());
        let piece = |offset, len| pb::ChunkPiece { offset, len };
        // No table: the data at the offset.
        assert_eq!(split_pieces(7, &data, &[], 107).unwrap(), vec![(7, data.clone())]);
        assert!(split_pieces(8, &data, &[], 107).is_err());
        // A table: each piece's share of the data, in order, at its own offset.
        let out = split_pieces(999, &data, &[piece(50, 60), piece(0, 40)], 110).unwrap();
        assert_eq!(out, vec![(50, data.slice(0..60)), (0, data.slice(60..100))]);
        // Pieces that do not add up to the data, an empty one, one past the limit, too many.
        for bad in [
            vec![piece(0, 60)],
            vec![piece(0, 60), piece(0, 60)],
            vec![piece(0, 100), piece(5, 0)],
            vec![piece(0, 40), piece(60, 60)],
        ] {
            assert!(split_pieces(0, &data, &bad, 110).is_err(), "{bad:?}");
        }
        let many = Bytes::from(vec![1u8; MAX_CHUNK_PIECES + 1]);
        let table: Vec<_> = (0..=MAX_CHUNK_PIECES as u32).map(|i| piece(i, 1)).collect();
        assert!(split_pieces(0, &many, &table, 1 << 20).is_err());
        assert!(split_pieces(0, &many.slice(1..), &table[1..], 1 << 20).is_ok());
    }

    #[test]
    fn pieces_that_follow_each_other_join() {
        let p = |offset: u32, len: usize| (offset, Bytes::from(vec![0u8; len]));
        let t = piece_table(&[p(0, 4096), p(4096, 100), p(4196, 4), p(9000, 10), p(0, 1), p(1, 1)]);
        let got: Vec<(u32, u32)> = t.iter().map(|c| (c.offset, c.len)).collect();
        assert_eq!(got, vec![(0, 4200), (9000, 10), (0, 2)]);
        // An end past the largest offset does not wrap around to join a piece at 0.
        let t = piece_table(&[p(u32::MAX, 1), p(0, 1)]);
        assert_eq!(t.len(), 2);
    }
}
