//! The OpenAPI 3.1 document served at `/openapi.json`.

use serde_json::{Value, json};

fn err(desc: &str) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn job_ok(desc: &str) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Video"}}}})
}

pub fn document() -> Value {
    let id = json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}]);
    let request_props = json!({
        "prompt": {"type": "string", "maxLength": crate::job::MAX_PROMPT_CHARS},
        "negative_prompt": {"type": "string", "description": "default: the official negative prompt of the task"},
        "size": {"type": "string", "example": "832x480", "description": "WIDTHxHEIGHT of a loaded profile"},
        "seconds": {"type": ["number", "string"], "description": "frames = 16·seconds + 1; must match a loaded profile"},
        "frames": {"type": "integer"},
        "steps": {"type": "integer", "minimum": 1, "maximum": crate::job::MAX_STEPS, "description": "default 50 (40 for I2V)"},
        "guidance_scale": {"type": "number", "minimum": 0, "maximum": 100, "description": "default 5"},
        "shift": {"type": "number", "exclusiveMinimum": 0, "maximum": 100, "description": "default 5 (3 for I2V at 480P)"},
        "solver": {"type": "string", "enum": ["unipc", "dpm++", "euler", "lcm"], "default": "unipc"},
        "timesteps": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 1000}, "description": "a step-distilled model's decreasing step list (wan-run --timesteps), instead of steps"},
        "cfg_zero_star": {"type": "boolean", "default": false, "description": "CFG-Zero* optimised scale"},
        "zero_init_steps": {"type": "integer", "minimum": 0, "default": 0, "description": "CFG-Zero* zero-init steps"},
        "cache": {"type": "string", "enum": ["none", "teacache", "teacache-ret", "magcache", "fbcache"], "default": "none",
                  "description": "step caching (wan-run --cache); teacache and magcache need the built-in table of an official checkpoint (422 no_cache_table otherwise), fbcache needs none"},
        "cache_threshold": {"type": ["number", "string"], "description": "a number > 0 or a preset of the recognised official model (teacache: slow, fast; magcache: default); default: the model's slow/default preset, else teacache 0.2, magcache 0.12, fbcache 0.05"},
        "cache_max_skip": {"type": "integer", "minimum": 1, "description": "magcache only: the most consecutive skips (K)"},
        "cache_retention": {"type": "number", "minimum": 0, "exclusiveMaximum": 1, "description": "magcache only: the fraction of initial calls always computed"},
        "seed": {"type": "integer", "minimum": 0, "maximum": 9007199254740991u64, "description": "default: random, reported in the job"},
        "context_scale": {"type": ["number", "string"], "description": "VACE: scale of the hints added to the main blocks (wan-run --context-scale; a finite 32-bit float, default 1.0); makes the job a VACE job"},
    });
    let cache = json!({"type": ["object", "null"], "description": "the step cache asked for (null: none); once completed also what it did",
                        "properties": {"policy": {"type": "string"}, "threshold": {"type": ["number", "string", "null"]},
                            "preset": {"type": "string"}, "max_skip": {"type": ["integer", "null"]}, "retention": {"type": ["number", "null"]},
                            "block_forwards": {"type": "integer", "description": "block-stack forwards run"},
                            "block_forwards_uncached": {"type": "integer", "description": "forwards without the cache"},
                            "branches": {"type": "array", "items": {"type": "object", "properties": {
                                "branch": {"enum": ["cond", "uncond"]}, "computed_steps": {"type": "integer"},
                                "computed": {"type": "array", "items": {"type": "boolean"}, "description": "per step: whether the block stack ran"}}}}}});
    let mut multipart_props = request_props.clone();
    multipart_props["input_reference"] = json!({"type": "string", "format": "binary", "description": "PNG, JPEG or WebP image: image-to-video, or the first frame of first-last-frame-to-video"});
    multipart_props["last_image"] = json!({"type": "string", "format": "binary", "description": "PNG, JPEG or WebP image of the size of input_reference: the last frame (first-last-frame-to-video engines; needs input_reference)"});
    multipart_props["control_video"] = json!({"type": "string", "format": "binary", "description": "VACE: H.264 MP4 control video (pose, depth, a video to edit) of the engines' size and frame count (wan-run --control-video); checked while decoding, before the job is accepted"});
    multipart_props["control_mask"] = json!({"type": "string", "format": "binary", "description": "VACE: H.264 MP4 mask of the control video, its size and frame count (white = generate, black = keep; wan-run --control-mask); needs control_video; default: generate everywhere"});
    multipart_props["reference_image"] = json!({"type": "string", "format": "binary", "description": "VACE: PNG, JPEG or WebP reference image (subject, background), letterboxed onto a white canvas of the video size; repeat the part once per image, in order, exactly as many as the engines take (wan-compile --reference-images)"});
    json!({
        "openapi": "3.1.0",
        "info": {"title": "wan-serve", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Wan2.1 video generation on warm engines: submit a job, poll or stream its events, download the MP4."},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "CreateVideo": {"type": "object", "required": ["prompt"], "additionalProperties": false, "properties": request_props},
                "CreateVideoMultipart": {"type": "object", "required": ["prompt"], "properties": multipart_props},
                "Video": {"type": "object", "properties": {
                    "id": {"type": "string"}, "object": {"const": "video"},
                    "model": {"type": "string", "description": "the profile: task-WIDTHxHEIGHTxFRAMES (task t2v, i2v, flf2v or vace)"},
                    "status": {"enum": ["queued", "in_progress", "completed", "failed", "cancelled"]},
                    "progress": {"type": "integer", "minimum": 0, "maximum": 100},
                    "created_at": {"type": "integer"}, "completed_at": {"type": ["integer", "null"]},
                    "size": {"type": "string"}, "seconds": {"type": "string"}, "frames": {"type": "integer"},
                    "seed": {"type": "integer"}, "steps": {"type": ["integer", "null"]},
                    "worker": {"type": ["string", "null"], "description": "the server that runs or ran it"},
                    "cache": cache,
                    "vace": {"type": ["object", "null"], "description": "VACE inputs of the job (null: not a VACE job)",
                             "properties": {"control_video": {"type": "boolean"}, "control_mask": {"type": "boolean"},
                                 "reference_images": {"type": "integer"}, "context_scale": {"type": "number"}}},
                    "error": {"type": ["object", "null"], "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
                "VideoList": {"type": "object", "properties": {
                    "object": {"const": "list"}, "data": {"type": "array", "items": {"$ref": "#/components/schemas/Video"}},
                    "first_id": {"type": ["string", "null"]}, "last_id": {"type": ["string", "null"]}, "has_more": {"type": "boolean"}}},
                "Error": {"type": "object", "properties": {"error": {"type": "object", "properties": {
                    "message": {"type": "string"}, "type": {"type": "string"},
                    "param": {"type": ["string", "null"]}, "code": {"type": "string"}}}}}
            }
        },
        "security": [{"bearer": []}],
        "paths": {
            "/v1/videos": {
                "post": {"summary": "Create a video job",
                    "requestBody": {"required": true, "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/CreateVideo"}},
                        "multipart/form-data": {"schema": {"$ref": "#/components/schemas/CreateVideoMultipart"}}}},
                    "responses": {"200": job_ok("The job, queued"), "400": err("Not JSON / not a form"),
                        "401": err("Missing or wrong bearer token"), "413": err("Body, image or video part too large"),
                        "415": err("Neither JSON nor multipart"), "422": err("A field is invalid (named in error.param)"),
                        "429": err("Queue full; see Retry-After"), "503": err("Shutting down")}},
                "get": {"summary": "List jobs, newest first",
                    "parameters": [{"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20}},
                                   {"name": "after", "in": "query", "schema": {"type": "string"}, "description": "cursor: the last id of the previous page"}],
                    "responses": {"200": {"description": "A page", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/VideoList"}}}}}}
            },
            "/v1/videos/{id}": {
                "parameters": id,
                "get": {"summary": "Retrieve a job", "responses": {"200": job_ok("The job"), "404": err("No such job")}},
                "delete": {"summary": "Delete a job and its files", "responses": {"200": {"description": "Deleted"}, "404": err("No such job"), "409": err("Running: cancel it first")}}
            },
            "/v1/videos/{id}/content": {
                "parameters": id,
                "get": {"summary": "Download the MP4 (or the JSON sidecar)",
                    "parameters": [{"name": "variant", "in": "query", "schema": {"enum": ["video", "sidecar"], "default": "video"}}],
                    "responses": {"200": {"description": "The file", "content": {"video/mp4": {}, "application/json": {}}},
                        "404": err("No such job"), "409": err("Not completed")}}
            },
            "/v1/videos/{id}/cancel": {
                "parameters": id,
                "post": {"summary": "Cancel (a running job stops at its next step)", "responses": {"200": job_ok("The job"), "404": err("No such job"), "409": err("Already finished")}}
            },
            "/v1/videos/{id}/events": {
                "parameters": id,
                "get": {"summary": "Server-Sent Events: queued (position), in_progress, step (step, steps, seconds), then completed, failed or cancelled (the job)",
                    "responses": {"200": {"description": "An event stream", "content": {"text/event-stream": {}}}}}
            },
            "/healthz": {"get": {"security": [], "summary": "The process answers", "responses": {"200": {"description": "ok"}}}},
            "/readyz": {"get": {"security": [], "summary": "Every engine loaded and warm", "responses": {"200": {"description": "ready"}, "503": {"description": "loading or draining"}}}},
            "/metrics": {"get": {"security": [], "summary": "Prometheus metrics", "responses": {"200": {"description": "text exposition format"}}}},
            "/openapi.json": {"get": {"security": [], "summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}}}
        }
    })
}
