"""The platform's tables this project reads, as external assets: lineage in the UI starts
where the data does. Other systems write them; Dagster never materializes them."""

import dagster as dg

_GROUP = "platform_sources"


def _source(name: str, description: str) -> dg.AssetSpec:
    return dg.AssetSpec(name, group_name=_GROUP, kinds={"postgres"}, description=description)


mirt_ability = _source("mirt_ability", "IRT ability calibrations (theta, se) per user and fit: "
                       "the first score source of the panel and the Normal approximation's input.")
student_topic_theta = _source("student_topic_theta", "Per-topic thetas: the panel's second source "
                              "(mean over topics per week).")
features_topic_daily = _source("features_topic_daily", "Daily practice per topic (attempts, correct, "
                               "theta_estimate): the panel's third source and the accuracy source.")
weekly_kpi = _source("weekly_kpi", "The platform's weekly KPI rows; its kpis->>'ability_estimate' is the "
                     "panel's fourth source. This project merges P and its keys into kpis.")

panel_sources = [mirt_ability, student_topic_theta, features_topic_daily, weekly_kpi]
