"""The page-view count of benches/compare in faust-streaming.

Clicks keyed by URL (raw UTF-8) with a JSON count as value, summed per URL
into the table ``click_counts`` (RocksDB through rocksdict, changelogged).
The runner sets CMP_BOOTSTRAP, CMP_APP (the app id, so the group id),
CMP_TOPIC, CMP_GUARANTEE and CMP_STATE_DIR, and starts
``python page_views.py worker``. Commits every second, as the Faustus
worker does. Runs until SIGTERM.
"""

import os

import faust

app = faust.App(
    os.environ["CMP_APP"],
    broker="kafka://" + os.environ["CMP_BOOTSTRAP"],
    datadir=os.environ["CMP_STATE_DIR"],
    store=os.environ.get("CMP_FAUST_STORE", "rocksdb://"),
    processing_guarantee=os.environ.get("CMP_GUARANTEE", "at_least_once"),
    broker_commit_interval=1.0,
    topic_partitions=6,
    web_enabled=False,
)

clicks = app.topic(
    os.environ["CMP_TOPIC"],
    key_type=str,
    value_type=int,
    key_serializer="raw",
    value_serializer="json",
)

click_counts = app.Table("click_counts", default=int, partitions=6)


@app.agent(clicks)
async def count_click(stream):
    async for url, count in stream.items():
        click_counts[url] += count


if __name__ == "__main__":
    app.main()
