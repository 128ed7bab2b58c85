#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {}
pub async fn run(_a: DemoArgs) -> Result<(), String> { Err("unfinished".into()) }
