//! docs/testing.md's example, as written there: the page-view counter tested
//! with the in-process driver, no broker.

use faustus::prelude::*;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Click {
    pub count: u64,
}

pub fn page_views(props: Properties) -> (App, Topic<String, Click>, Table<String, u64>) {
    let mut app = App::new("page_views", props);
    let clicks = app.topic::<String, Click>("page_views");
    let counts = app.table::<String, u64>("click_counts");
    let table = counts.clone();
    app.agent(
        "count_click",
        &clicks,
        async move |batch: Batch<String, Click>| {
            let mut t = batch.table(&table)?;
            for item in batch.items() {
                let (url, click) = item?;
                t.update(&url, |n| *n += click.count)?;
            }
            Ok(())
        },
    );
    (app, clicks, counts)
}

use faustus::engine::testing::TestDriver;

#[tokio::test]
async fn clicks_are_counted_per_url() -> faustus::engine::Result<()> {
    let props = Properties::new().set("bootstrap.servers", "unused:9092");
    let (app, clicks, counts) = page_views(props);
    let mut driver = TestDriver::new(&app)?;
    for (url, n) in [("/a", 1), ("/b", 2), ("/a", 3)] {
        driver
            .pipe(&clicks, Some(&url.to_string()), &Click { count: n })
            .await?;
    }
    assert_eq!(
        driver.table(&counts)?,
        vec![("/a".into(), 4), ("/b".into(), 2)]
    );
    assert_eq!(driver.table_get(&counts, &"/c".to_string())?, None);
    Ok(())
}
