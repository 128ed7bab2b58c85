#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {}
pub async fn run(_a: BenchArgs) -> Result<(), String> { Err("unfinished".into()) }
