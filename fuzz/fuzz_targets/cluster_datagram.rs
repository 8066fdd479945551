#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| convoy_fuzz::cluster_datagram(data));
