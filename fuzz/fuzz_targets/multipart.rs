#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = photolabel_fuzz::multipart(data);
});
