//! The two stream codecs behind one sans-IO decode call, each bounded by the header's window.

use liblzma::stream::{Action, Filters, LzmaOptions, Status, Stream};
use zstd::zstd_safe::{self, DCtx, DParameter, InBuffer, OutBuffer};

use super::container::Codec;

/// One decode step's outcome.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Progress {
    /// Input bytes consumed.
    pub consumed: usize,
    /// Output bytes produced.
    pub produced: usize,
    /// The stream's end was reached (zstd: the frame is complete; xz: the LZMA2 end marker).
    pub ended: bool,
}

/// A streaming decoder whose window is fixed when it is made.
pub(crate) enum Decoder {
    Zstd(Box<DCtx<'static>>),
    /// The stream and its dictionary size.
    Xz(Box<Stream>, usize),
}

/// liblzma's LZMA2 decoder state besides the dictionary (its `lzma_lzma1_decoder` is about
/// 28 KiB; rounded up).
const LZMA2_STATE: usize = 32 * 1024;

/// LZMA2 options with the dictionary of `2^window_log` (encoder and decoder alike).
pub(crate) fn lzma2_filters(preset: u32, window_log: u8) -> Result<Filters, &'static str> {
    let mut options = LzmaOptions::new_preset(preset).map_err(|_| "xz: bad preset")?;
    options.dict_size(1u32 << window_log);
    let mut filters = Filters::new();
    filters.lzma2(&options);
    Ok(filters)
}

impl Decoder {
    /// A decoder for `codec` refusing anything that needs a window over `2^window_log`.
    pub(crate) fn new(codec: Codec, window_log: u8) -> Result<Decoder, &'static str> {
        match codec {
            Codec::Zstd => {
                let mut dctx = DCtx::try_create().ok_or("zstd: out of memory")?;
                dctx.set_parameter(DParameter::WindowLogMax(u32::from(window_log)))
                    .map_err(zstd_safe::get_error_name)?;
                Ok(Decoder::Zstd(Box::new(dctx)))
            }
            Codec::Xz => {
                // Raw LZMA2: the dictionary size comes from here, not from the stream.
                let filters = lzma2_filters(0, window_log)?;
                let stream = Stream::new_raw_decoder(&filters).map_err(|_| "xz: decoder init")?;
                Ok(Decoder::Xz(Box::new(stream), 1 << window_log))
            }
        }
    }

    /// Decodes from `input` into `output`.
    pub(crate) fn decode(
        &mut self,
        input: &[u8],
        output: &mut [u8],
    ) -> Result<Progress, &'static str> {
        match self {
            Decoder::Zstd(dctx) => {
                let mut inb = InBuffer::around(input);
                let mut outb = OutBuffer::around(output);
                let hint = dctx
                    .decompress_stream(&mut outb, &mut inb)
                    .map_err(zstd_safe::get_error_name)?;
                Ok(Progress {
                    consumed: inb.pos(),
                    produced: outb.pos(),
                    ended: hint == 0,
                })
            }
            Decoder::Xz(stream, _) => {
                let (in0, out0) = (stream.total_in(), stream.total_out());
                let status = stream
                    .process(input, output, Action::Run)
                    .map_err(|e| match e {
                        liblzma::stream::Error::Data => "xz: corrupt data",
                        liblzma::stream::Error::Format => "xz: bad format",
                        liblzma::stream::Error::Options => "xz: bad options",
                        liblzma::stream::Error::Mem | liblzma::stream::Error::MemLimit => {
                            "xz: out of memory"
                        }
                        _ => "xz: decoder error",
                    })?;
                // Both deltas are bounded by the slices' lengths.
                let consumed = usize::try_from(stream.total_in() - in0).unwrap_or(input.len());
                let produced = usize::try_from(stream.total_out() - out0).unwrap_or(output.len());
                Ok(Progress {
                    consumed,
                    produced,
                    ended: status == Status::StreamEnd,
                })
            }
        }
    }

    /// Bytes the codec library holds: zstd's own report; for xz the dictionary plus
    /// [`LZMA2_STATE`] (liblzma's safe wrapper reports no decoder usage).
    pub(crate) fn memory(&self) -> usize {
        match self {
            Decoder::Zstd(dctx) => dctx.sizeof(),
            Decoder::Xz(_, dict) => dict + LZMA2_STATE,
        }
    }
}
