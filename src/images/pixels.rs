//! Pixels: decoding what providers send (PNG or JPEG, sniffed by magic bytes, with size limits
//! checked before anything large is allocated), centre-cropping and Lanczos3 resizing with
//! `fast_image_resize`, and PNG encoding. Everything here is CPU-bound and synchronous: callers
//! run it on the blocking pool (`Images::blocking`), never on the async workers.

use std::io::Cursor;

use fast_image_resize::images::{TypedImage, TypedImageRef};
use fast_image_resize::pixels::U8x3;
use fast_image_resize::{ResizeOptions, Resizer};
use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{DynamicImage, ImageDecoder, ImageEncoder, ImageFormat, ImageReader, Limits};

/// The largest image decoded or made: 8192×8192 (64 Mi pixels), which is what the largest
/// product needs (print, 2048×2048, upscaled 4× again). An answer claiming more is refused
/// from its header alone.
pub const MAX_PIXELS: u64 = 8192 * 8192;
/// The largest picture a drawing provider may answer with (they draw about 1024 px a side);
/// only the upscale service's answers may reach [`MAX_PIXELS`].
pub const MAX_DRAWN_PIXELS: u64 = 4096 * 4096;
/// The longest side accepted, whatever the pixel count.
const MAX_SIDE: u32 = 16_384;

/// An 8-bit RGB image. Alpha is dropped on decoding: no provider draws transparency, and the
/// delivered PNGs are opaque.
#[derive(Clone)]
pub struct Rgb {
    pub width: u32,
    pub height: u32,
    /// `width * height * 3` bytes, row by row.
    pub data: Vec<u8>,
}

/// Why bytes could not be made into the wanted picture; the text is safe to show.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Bad(pub String);

/// PNG or JPEG, by magic bytes: providers' answers do not reliably say which.
pub fn sniff(bytes: &[u8]) -> Option<ImageFormat> {
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some(ImageFormat::Png)
    } else if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        Some(ImageFormat::Jpeg)
    } else {
        None
    }
}

/// Decodes a PNG or JPEG to RGB. The dimensions in the header are checked against
/// `max_pixels` (at most [`MAX_PIXELS`]) before the pixels are decoded, and the decoder's own
/// allocation limit is set, so a hostile answer cannot make this allocate more than one image
/// of that size.
pub fn decode(bytes: &[u8], max_pixels: u64) -> Result<Rgb, Bad> {
    let max_pixels = max_pixels.min(MAX_PIXELS);
    let format = sniff(bytes).ok_or_else(|| Bad("the answer is not a PNG or JPEG image".into()))?;
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format);
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    // RGBA at the largest size, the most a decoder needs for its output.
    limits.max_alloc = Some(max_pixels * 4);
    reader.limits(limits);
    let decoder = reader
        .into_decoder()
        .map_err(|e| Bad(format!("the image could not be read: {e}")))?;
    let (width, height) = decoder.dimensions();
    check_size(width, height)?;
    if u64::from(width) * u64::from(height) > max_pixels {
        return Err(Bad(format!(
            "the image is too large ({width}×{height}, at most {max_pixels} pixels here)"
        )));
    }
    let image = DynamicImage::from_decoder(decoder)
        .map_err(|e| Bad(format!("the image could not be decoded: {e}")))?;
    let rgb = image.into_rgb8();
    Ok(Rgb {
        width: rgb.width(),
        height: rgb.height(),
        data: rgb.into_raw(),
    })
}

/// Refuses empty images and ones past [`MAX_PIXELS`].
pub fn check_size(width: u32, height: u32) -> Result<(), Bad> {
    if width == 0 || height == 0 {
        return Err(Bad("the image is empty".into()));
    }
    if width > MAX_SIDE || height > MAX_SIDE || u64::from(width) * u64::from(height) > MAX_PIXELS {
        return Err(Bad(format!(
            "the image is too large ({width}×{height}, at most {MAX_PIXELS} pixels)"
        )));
    }
    Ok(())
}

/// Exactly `width`×`height`: the source is centre-cropped to the target's aspect ratio, then
/// resampled with Lanczos3 (up or down). An image already that size is returned as it is.
pub fn fit(source: Rgb, width: u32, height: u32) -> Result<Rgb, Bad> {
    check_size(width, height)?;
    if source.width == width && source.height == height {
        return Ok(source);
    }
    let src = TypedImageRef::<U8x3>::from_buffer(source.width, source.height, &source.data)
        .map_err(|e| Bad(format!("resize: {e}")))?;
    let mut data = vec![0; width as usize * height as usize * 3];
    let mut dst = TypedImage::<U8x3>::from_buffer(width, height, &mut data)
        .map_err(|e| Bad(format!("resize: {e}")))?;
    // Lanczos3 convolution is the default algorithm; the crop keeps the aspect ratio. Typed to
    // RGB so that only that pixel type's code is compiled in.
    let options = ResizeOptions::new().fit_into_destination(Some((0.5, 0.5)));
    Resizer::new()
        .resize_typed(&src, &mut dst, &options)
        .map_err(|e| Bad(format!("resize: {e}")))?;
    Ok(Rgb {
        width,
        height,
        data,
    })
}

/// PNG with fast deflate and adaptive filters: a 2048×2048 picture encodes in a fraction of
/// the time of the default level for a file about a tenth larger.
pub fn encode_png(image: &Rgb) -> Result<Vec<u8>, Bad> {
    let mut out = Vec::new();
    PngEncoder::new_with_quality(&mut out, CompressionType::Fast, FilterType::Adaptive)
        .write_image(
            &image.data,
            image.width,
            image.height,
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| Bad(format!("PNG encoding failed: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gradient(width: u32, height: u32) -> Rgb {
        let mut data = Vec::with_capacity((width * height * 3) as usize);
        for y in 0..height {
            for x in 0..width {
                data.extend_from_slice(&[(x % 256) as u8, (y % 256) as u8, 128]);
            }
        }
        Rgb {
            width,
            height,
            data,
        }
    }

    #[test]
    fn png_round_trip_keeps_size() {
        let png = encode_png(&gradient(40, 30)).unwrap();
        assert_eq!(sniff(&png), Some(ImageFormat::Png));
        let back = decode(&png, MAX_PIXELS).unwrap();
        assert_eq!((back.width, back.height), (40, 30));
        assert_eq!(back.data.len(), 40 * 30 * 3);
    }

    #[test]
    fn fit_crops_to_the_aspect_ratio_and_resizes_exactly() {
        let out = fit(gradient(300, 200), 128, 64).unwrap();
        assert_eq!((out.width, out.height), (128, 64));
        assert_eq!(out.data.len(), 128 * 64 * 3);
        let up = fit(gradient(64, 64), 256, 256).unwrap();
        assert_eq!((up.width, up.height), (256, 256));
    }

    #[test]
    fn garbage_and_unknown_formats_are_refused() {
        for bytes in [
            &b""[..],
            b"GIF89a....",
            b"\x89PNG\r\n\x1a\nnot really",
            &[0xFF, 0xD8, 0xFF, 0xE0, 0, 0],
        ] {
            assert!(decode(bytes, MAX_PIXELS).is_err());
        }
    }

    /// A PNG header claiming 100 000 × 100 000 pixels is refused before any pixel buffer exists.
    #[test]
    fn a_huge_claimed_size_is_refused_from_the_header() {
        let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
        let mut ihdr = b"IHDR".to_vec();
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&100_000u32.to_be_bytes());
        ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
        png.extend_from_slice(&13u32.to_be_bytes());
        png.extend_from_slice(&ihdr);
        png.extend_from_slice(&crc32(&ihdr).to_be_bytes());
        let error = decode(&png, MAX_PIXELS).err().expect("refused");
        assert!(
            error.0.contains("too large") || error.0.contains("limit"),
            "{error}"
        );
    }

    #[test]
    fn a_drawing_is_held_to_the_smaller_limit() {
        let png = encode_png(&gradient(64, 64)).unwrap();
        assert!(decode(&png, 64 * 64).is_ok());
        assert!(decode(&png, 64 * 63).is_err());
    }

    #[test]
    fn sizes_outside_the_limits_are_refused() {
        assert!(check_size(0, 10).is_err());
        assert!(check_size(8192, 8192).is_ok());
        assert!(check_size(8193, 8192).is_err());
        assert!(check_size(20_000, 10).is_err());
    }

    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = 0xFFFF_FFFFu32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
}
