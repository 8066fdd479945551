#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| convoy_fuzz::http2_conn(data));
