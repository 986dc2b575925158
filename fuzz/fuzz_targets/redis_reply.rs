#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| eventbus_fuzz::redis_reply(data));
