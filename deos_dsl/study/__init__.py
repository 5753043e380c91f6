"""The baseline study (`deos study`): a search space and every hand-designed baseline at each
token budget, measured on their emitted graphs; results table, Pareto plot, operator patterns."""

from .api import run_study, study_spaces
from .fit import Fitted, fit_baseline, is_baseline
from .run import Entry, Study, StudyPlan

__all__ = ["Entry", "Fitted", "Study", "StudyPlan", "fit_baseline", "is_baseline", "run_study", "study_spaces"]
