//! Server-rendered SVG bar charts (no script, no styles: the CSP allows neither inline). The
//! geometry is computed here; `templates/ops/chart.html` only writes it out, and every chart
//! is followed by the same figures as a table for screen readers and text browsers.

/// One bar: a label under it and stacked segments from the bottom up.
pub struct Bar {
    pub label: String,
    pub segments: Vec<Segment>,
}

pub struct Segment {
    pub value: i64,
    /// A fill colour from the stylesheet's palette.
    pub fill: &'static str,
}

/// A bar chart laid out in a `WIDTH` × `HEIGHT` view box.
pub struct BarChart {
    pub title: String,
    pub rects: Vec<Rect>,
    pub labels: Vec<Label>,
    /// Horizontal grid lines with their values, bottom to top.
    pub ticks: Vec<Label>,
    pub width: i64,
    pub height: i64,
    pub baseline: i64,
}

pub struct Rect {
    pub x: i64,
    pub y: i64,
    pub width: i64,
    pub height: i64,
    pub fill: &'static str,
    /// Shown as the SVG `<title>` (a tooltip) of the rectangle.
    pub tip: String,
}

pub struct Label {
    pub x: i64,
    pub y: i64,
    pub text: String,
}

pub const GREEN: &str = "#2f9e5b";
pub const AMBER: &str = "#e0a100";
pub const RED: &str = "#c8362b";

const WIDTH: i64 = 640;
const HEIGHT: i64 = 220;
const LEFT: i64 = 48;
const TOP: i64 = 12;
const BOTTOM: i64 = 36;

impl BarChart {
    pub fn new(title: &str, bars: &[Bar]) -> BarChart {
        let max = bars
            .iter()
            .map(|b| b.segments.iter().map(|s| s.value).sum::<i64>())
            .max()
            .unwrap_or(0);
        let scale_max = nice_ceiling(max);
        let plot_height = HEIGHT - TOP - BOTTOM;
        let baseline = HEIGHT - BOTTOM;
        let slot = (WIDTH - LEFT) / (bars.len().max(1) as i64);
        let bar_width = (slot * 7 / 10).max(2);
        let mut rects = Vec::new();
        let mut labels = Vec::new();
        for (i, bar) in bars.iter().enumerate() {
            let x = LEFT + slot * i as i64 + (slot - bar_width) / 2;
            let mut top = baseline;
            for segment in bar.segments.iter().filter(|s| s.value > 0) {
                // At least one pixel, so a count of 1 among 100,000 still shows.
                let height = (segment.value * plot_height / scale_max).max(1);
                top -= height;
                rects.push(Rect {
                    x,
                    y: top,
                    width: bar_width,
                    height,
                    fill: segment.fill,
                    tip: format!("{}: {}", bar.label, segment.value),
                });
            }
            labels.push(Label {
                x: x + bar_width / 2,
                y: baseline + 16,
                text: bar.label.clone(),
            });
        }
        let ticks = (0..=4)
            .map(|k| Label {
                x: LEFT - 6,
                y: baseline - plot_height * k / 4,
                text: (scale_max * k / 4).to_string(),
            })
            .collect();
        BarChart {
            title: title.to_string(),
            rects,
            labels,
            ticks,
            width: WIDTH,
            height: HEIGHT,
            baseline,
        }
    }

    /// Where the plot area starts on the left (for the grid lines).
    pub fn left(&self) -> i64 {
        LEFT
    }
}

/// The smallest of 1, 2, 4, 5, 10, 20, 40, 50, … that is ≥ `value` (and at least 4, so the
/// four grid steps are whole numbers).
fn nice_ceiling(value: i64) -> i64 {
    let mut unit = 1;
    loop {
        for step in [1, 2, 4, 5] {
            if step * unit >= value.max(4) {
                return step * unit;
            }
        }
        unit *= 10;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_rounds_up_to_a_readable_maximum() {
        assert_eq!(nice_ceiling(0), 4);
        assert_eq!(nice_ceiling(5), 5);
        assert_eq!(nice_ceiling(7), 10);
        assert_eq!(nice_ceiling(37), 40);
        assert_eq!(nice_ceiling(100_000), 100_000);
        assert_eq!(nice_ceiling(100_001), 200_000);
    }

    #[test]
    fn bars_are_proportional_and_stacked() {
        let chart = BarChart::new(
            "t",
            &[
                Bar {
                    label: "a".into(),
                    segments: vec![
                        Segment {
                            value: 10,
                            fill: GREEN,
                        },
                        Segment {
                            value: 10,
                            fill: RED,
                        },
                    ],
                },
                Bar {
                    label: "b".into(),
                    segments: vec![Segment {
                        value: 1,
                        fill: GREEN,
                    }],
                },
                Bar {
                    label: "c".into(),
                    segments: vec![Segment {
                        value: 0,
                        fill: GREEN,
                    }],
                },
            ],
        );
        // Scale 20: the full bar spans the plot height, its two halves stack.
        assert_eq!(chart.rects.len(), 3, "an empty segment draws nothing");
        let plot = HEIGHT - TOP - BOTTOM;
        assert_eq!(chart.rects[0].height, plot / 2);
        assert_eq!(chart.rects[0].y + chart.rects[0].height, chart.baseline);
        assert_eq!(chart.rects[1].y + chart.rects[1].height, chart.rects[0].y);
        assert_eq!(chart.rects[2].height, (plot / 20).max(1));
        assert_eq!(chart.labels.len(), 3);
        assert_eq!(chart.ticks.last().unwrap().text, "20");
    }
}
