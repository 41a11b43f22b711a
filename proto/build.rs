fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/sealfs.proto");
    tonic_prost_build::configure()
        .bytes(".sealfs.v1")
        .codec_path("crate::codec::SealCodec")
        .compile_protos(&["proto/sealfs.proto"], &["proto"])?;
    Ok(())
}
