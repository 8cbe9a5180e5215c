//! Media I/O of the wanrt application layer.
//!
//! * [`image`]: image files (PNG, JPEG, WebP) decoded into the runtime's
//!   `RgbImage` exactly as PIL's `convert('RGB')` does, with typed errors for
//!   bad files;
//! * [`frames`]: a video given as a directory of numbered PNG frames (VACE's
//!   control video and mask), decoded frame by frame;
//! * [`video`]: generated frames written as an H.264 MP4 or numbered PNG
//!   frames, atomically.
//!
//! The execution core (`wanrt-runtime`) takes decoded images and returns
//! tensors; this crate sits on top of it, beside the CLI (`wanrt-app`) and
//! the server (`wanrt-server`), so an embedding application that brings its
//! own media handling links neither the H.264 encoder nor the image decoders.

pub mod frames;
pub mod image;
pub mod video;
