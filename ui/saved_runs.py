"""The saved-runs view of a run store, shared by the Training and Recovery pages: the table of saved
runs, a manage expander (rename where the store can, delete with confirmation) whose outcome shows
as a one-line message on the next run, and the reading of the chosen runs, where an entry that cannot
be read is named and the others still show. The runs to show are picked by each page (``chosen_key``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence, TypeVar

import streamlit as st

from ui.format import MISSING

T = TypeVar("T")


@dataclass(frozen=True)
class SavedRuns:
    """One page's view of its run store.

    Widget and session keys start with ``prefix``: ``{prefix}_flash`` (the message after a change),
    ``{prefix}_confirm`` and ``{prefix}_delete`` (the delete), ``{prefix}_newname`` and
    ``{prefix}_rename`` (the rename, when ``rename_run`` is given).

    Attributes:
        prefix: the page's key prefix (``tr``, ``rc``).
        delete_run: the store's delete (run id); raises KeyError for a run that is gone.
        manage_key: key of the expander's run picker.
        manage_title: the expander's title.
        chosen_key: session key of the page's picker of runs to show; a deleted run leaves it.
        damaged_hint: said after the name of a run that cannot be read.
        rename_run: the store's rename (run id, new name), or None for a store without names;
            raises KeyError or ValueError when it cannot rename.
    """

    prefix: str
    delete_run: Callable[[str], Any]
    manage_key: str
    manage_title: str
    chosen_key: str
    damaged_hint: str = ""
    rename_run: Callable[[str, str], Any] | None = None

    def key(self, name: str) -> str:
        return f"{self.prefix}_{name}"

    # ----------------------------------------------------------------------------- the table

    def flash(self) -> None:
        """The message a rename or delete left for this run (once)."""
        if self.key("flash") in st.session_state:
            kind, message = st.session_state.pop(self.key("flash"))
            (st.error if kind == "error" else st.success)(message)

    def table(self, rows: Sequence[Mapping[str, Any]] | Any, column_config: Mapping[str, Any]) -> None:
        """The saved runs, one row each (``id`` names the run); a missing value (a failed run's accuracy)
        shows as ``MISSING``, not ``None``."""
        st.dataframe(rows, hide_index=True, width="stretch", column_config=dict(column_config), placeholder=MISSING)

    # ----------------------------------------------------------------------------- rename and delete

    def _say(self, message: str, kind: str = "success") -> None:
        st.session_state[self.key("flash")] = (kind, message)

    def _do_rename(self) -> None:
        try:
            self.rename_run(st.session_state[self.manage_key], st.session_state.get(self.key("newname"), ""))
            self._say("Renamed.")
        except (KeyError, ValueError) as err:
            self._say(f"Could not rename: {err}", "error")

    def _do_delete(self) -> None:
        run_id = st.session_state.get(self.manage_key)
        try:
            self.delete_run(run_id)
            self._say("Deleted.")
        except KeyError as err:
            self._say(f"Could not delete: {err}", "error")
        if run_id in st.session_state.get(self.chosen_key, []):
            st.session_state[self.chosen_key] = [r for r in st.session_state[self.chosen_key] if r != run_id]
        st.session_state[self.key("confirm")] = False  # the confirmation does not carry over to another run

    def manage(self, run_ids: Sequence[str], labels: Mapping[str, str]) -> None:
        """The expander: a run picker, a rename (when the store has names) and a delete that waits for
        its confirmation box."""
        with st.expander(self.manage_title):
            st.selectbox("Run", list(run_ids), format_func=labels.get, key=self.manage_key)
            if self.rename_run is None:
                confirm = st.checkbox("Yes, delete this run", key=self.key("confirm"))
                st.button("Delete", on_click=self._do_delete, disabled=not confirm, key=self.key("delete"))
                return
            r1, r2 = st.columns(2)
            r1.text_input("New name (empty: the settings' label)", max_chars=80, key=self.key("newname"))
            r1.button("Rename", on_click=self._do_rename, key=self.key("rename"))
            confirm = r2.checkbox("Yes, delete this run", key=self.key("confirm"))
            r2.button("Delete", on_click=self._do_delete, disabled=not confirm, key=self.key("delete"))

    # ----------------------------------------------------------------------------- reading runs

    def read(self, entries: Sequence[dict], read: Callable[[dict], T], labels: Mapping[str, str]) -> list[T]:
        """``read(entry)`` of each chosen run's index entry; a run that cannot be read (KeyError,
        ValueError) gets an error naming it and is left out."""
        out = []
        for e in entries:
            try:
                out.append(read(e))
            except (KeyError, ValueError) as err:
                st.error(f"Saved run {labels[e['run_id']]} (id {e['run_id']}) cannot be read: {err}."
                         + (f" {self.damaged_hint}" if self.damaged_hint else ""))
        return out
