

from pdiff.app import plots

from pdiff.studies.transfer import TABLE_HEADERS, table_rows



def test_plots_build_from_a_real_report(victim_report):
    acc = plots.accuracy_distribution(victim_report)
    assert [t.name for t in acc.data][:2] == ["generated", "originals"]
    assert list(acc.data[0].y) == victim_report["sources"]["generated"]["acc"]
    assert list(plots.asr_distribution(victim_report).data[0].y) == victim_report["sources"]["generated"]["asr"]
    tsne = plots.tsne_scatter(victim_report)
    assert sum(len(t.x) for t in tsne.data) == len(victim_report["tsne"]["x"])
    iou = plots.accuracy_vs_iou(victim_report)
    assert list(iou.data[0].x) == victim_report["similarity"]["max_iou_to_originals"]
    scatter = plots.acc_vs_asr(victim_report)
    assert list(scatter.data[0].x) == victim_report["sources"]["generated"]["asr"]
    assert scatter.data[-1].x[0] == victim_report["target"]["asr"] and len(scatter.data) == 1 + 8 + 1  # + clean-layers
    assert scatter.data[-1].marker.symbol == "x" and scatter.data[-1].name == "target as-is (victim)"
    rows = plots.summary_rows(victim_report)
    assert rows[0][:2] == ["generated", len(victim_report["sources"]["generated"]["acc"])]
    assert len(rows[0]) == len(plots.summary_headers(victim_report)) == 10
    nov = victim_report["novelty"]["generated"]
    assert rows[0][6:] == [round(victim_report["sources"]["generated"]["summary"]["acc"]["std"], 3), round(nov["self_iou"], 3),
                           round(nov["max_iou_mean"], 3), round(nov["coverage"], 3)]
    # the novelty scatter: every source's models, the originals' nearest-other IoU as the reference line
    assert {t.name for t in iou.data} == set(victim_report["similarity"]["per_model"])
    assert iou.layout.shapes[0].x0 == victim_report["novelty"]["originals"]["nearest_other_iou_mean"]
    transfer = table_rows(victim_report["target"], victim_report["sources"])
    assert transfer[0][0].startswith("target as-is") and transfer[0][6] == round(victim_report["target"]["asr"], 2)
    gen = victim_report["sources"]["generated"]
    assert transfer[1][:5] == ["generated", 0, 1024, 8, len(gen["acc"])]  # no budget images, the clean model's, K
    assert len(transfer[1]) == len(TABLE_HEADERS)
    assert transfer[1][8] == round(sum(gen["der"]) / len(gen["der"]), 3) and transfer[1][9] == round(max(gen["der"]), 3)
    assert {"clean-layers": [0, 1024, 0], "clean-model": [0, 1024, 0]}.items() <= {row[0]: row[1:4] for row in transfer}.items()
