//! Build script: validates every WGSL shader with naga (a shader error is a build error, not a
//! run-time surprise) and makes sure the CUDA sources the library embeds exist. The CUDA kernels
//! themselves are compiled at run time by NVRTC (no toolkit needed to build), and CI compiles
//! them through NVRTC in a test.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=shaders");
    println!("cargo:rerun-if-changed=kernels");
    for dir in ["shaders", "kernels"] {
        if !Path::new(dir).is_dir() {
            panic!("missing source directory {dir}/");
        }
    }
    let mut shaders: Vec<_> = std::fs::read_dir("shaders")
        .expect("read shaders/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "wgsl"))
        .collect();
    shaders.sort();
    for path in shaders {
        println!("cargo:rerun-if-changed={}", path.display());
        let src = std::fs::read_to_string(&path).expect("read shader");
        let module = match naga::front::wgsl::parse_str(&src) {
            Ok(m) => m,
            Err(e) => panic!(
                "{}: WGSL parse error:\n{}",
                path.display(),
                e.emit_to_string(&src)
            ),
        };
        let mut v = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::empty(),
        );
        if let Err(e) = v.validate(&module) {
            panic!(
                "{}: WGSL validation error:\n{}",
                path.display(),
                e.emit_to_string(&src)
            );
        }
    }
}
