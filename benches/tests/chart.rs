//! The chart module writes a PNG, or says plainly why it cannot (no font on this machine).

use lockstep_benches::chart::{bar_chart, line_chart, Bar, Series};

fn sample_series() -> Vec<Series> {
    vec![
        Series {
            label: "throughput".to_string(),
            points: vec![(1.0, 120_000.0), (4.0, 150_000.0), (16.0, 140_000.0)],
        },
        Series {
            label: "one point".to_string(),
            points: vec![(64.0, 90_000.0)],
        },
    ]
}

#[test]
fn writes_a_png_or_names_the_missing_font() {
    let dir = tempfile::tempdir().expect("temp dir");
    for (log_x, log_y) in [(false, false), (true, false), (false, true), (true, true)] {
        let path = dir.path().join(format!("chart-{log_x}-{log_y}.png"));
        let result = line_chart(
            &path,
            "Sample",
            "partitions",
            "commands/s",
            &sample_series(),
            log_x,
            log_y,
        );
        match result {
            Ok(()) => {
                let bytes = std::fs::read(&path).expect("chart written");
                assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
            }
            // A machine without fonts still runs the test suite; the error must say what to do.
            Err(error) => {
                let message = format!("{error:#}");
                assert!(message.contains("fonts-dejavu-core"), "{message}");
            }
        }
    }
}

#[test]
fn writes_a_bar_chart_or_names_the_missing_font() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bars: Vec<Bar> = [
        ("embedded", 160_000.0),
        ("postgres", 3_800.0),
        ("ceiling", 700_000.0),
    ]
    .into_iter()
    .map(|(label, value)| Bar {
        label: label.to_string(),
        value,
    })
    .collect();
    for log_y in [false, true] {
        let path = dir.path().join(format!("bars-{log_y}.png"));
        match bar_chart(&path, "Sample bars", "commands/s", &bars, log_y) {
            Ok(()) => {
                let bytes = std::fs::read(&path).expect("chart written");
                assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
            }
            Err(error) => {
                let message = format!("{error:#}");
                assert!(message.contains("fonts-dejavu-core"), "{message}");
            }
        }
    }
    assert!(bar_chart(&dir.path().join("none.png"), "none", "y", &[], false).is_err());
}

#[test]
fn refuses_what_it_cannot_draw() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("refused.png");
    assert!(line_chart(&path, "empty", "x", "y", &[], false, false).is_err());
    let zero = [Series {
        label: "zero".to_string(),
        points: vec![(0.0, 1.0)],
    }];
    assert!(line_chart(&path, "log of zero", "x", "y", &zero, true, false).is_err());
    let nan = [Series {
        label: "nan".to_string(),
        points: vec![(1.0, f64::NAN)],
    }];
    assert!(line_chart(&path, "nan", "x", "y", &nan, false, false).is_err());
}
