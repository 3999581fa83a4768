//! The built-in upscaler's speed: 2× and 4× of a 512×512 picture (decode, Lanczos3, PNG encode,
//! as `Images::upscale` does them without an upscale service), several runs, median.
//!
//!     cargo run --release --example upscale [runs]
//!
//! It calls the library's real `Images::upscale` with no `UPSCALE_API_URL`, so nothing leaves
//! the machine.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::Arc;
use std::time::{Duration, Instant};

use easy_writer::config::{Config, Flags};
use easy_writer::images::Images;
use easy_writer::llm::metrics::Metrics;

fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(7);
    let dir = tempfile_dir()?;
    let config_file = dir.join("bench.toml");
    std::fs::write(&config_file, "")?;
    let env = HashMap::from([(
        "EASY_WRITER_DATA_DIR".to_owned(),
        dir.to_string_lossy().into_owned(),
    )]);
    let flags = Flags {
        config: Some(config_file),
        bind: None,
    };
    let config = Config::load(&flags, &env)?.config;
    let images = Images::from_config(&config, Arc::new(Metrics::default()))?;
    let source = photo_like_png(512, 512)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!("built-in upscaler, 512×512 PNG source, {runs} runs each (median, min, max):");
    for scale in [2u32, 4] {
        let mut times = Vec::with_capacity(runs);
        let mut size = 0;
        for _ in 0..runs {
            let started = Instant::now();
            let out = runtime.block_on(images.upscale(&source, scale, &|_| {}))?;
            times.push(started.elapsed());
            size = out.bytes.len();
            assert_eq!((out.width, out.height), (512 * scale, 512 * scale));
        }
        times.sort();
        println!(
            "  {scale}× → {0}×{0}: median {1}, min {2}, max {3}; PNG {4:.1} MB",
            512 * scale,
            ms(times[runs / 2]),
            ms(times[0]),
            ms(times[runs - 1]),
            size as f64 / 1e6
        );
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

/// A picture with smooth gradients and fine detail, closer to a drawing than flat colour (which
/// compresses unrealistically well).
fn photo_like_png(width: u32, height: u32) -> anyhow::Result<Vec<u8>> {
    let image = image::RgbImage::from_fn(width, height, |x, y| {
        let (fx, fy) = (x as f32, y as f32);
        let wave = ((fx * 0.07).sin() * (fy * 0.05).cos() * 60.0) as i32;
        let noise = ((x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503)) >> 27) as i32;
        image::Rgb([
            (fx / width as f32 * 200.0) as u8 + (wave.unsigned_abs() as u8 / 2),
            (fy / height as f32 * 200.0) as u8 + noise as u8,
            (128 + wave).clamp(0, 255) as u8,
        ])
    });
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png)?;
    Ok(out.into_inner())
}

fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir =
        std::env::temp_dir().join(format!("easy-writer-upscale-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
