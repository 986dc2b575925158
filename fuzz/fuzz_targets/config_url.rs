#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| eventbus_fuzz::config_url(data));
