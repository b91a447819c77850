"""Which user classes run, and with what weight: the --weight-* options and
--tags/--exclude-tags, decided once on the master (or the local runner).

Locust's own tag filter empties the tasks of a user class that no tag selects
but still spawns the class, whose users then fail; and the master's dispatcher
shares users out by class weight. So the classes are chosen here, before the
first spawn, and the workers spawn only what the master sends them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping


def select_users(
    tags_of: Mapping[str, frozenset[str]],
    weights: Mapping[str, int],
    tags: Iterable[str] | None = None,
    exclude_tags: Iterable[str] | None = None,
) -> dict[str, int]:
    """User class name -> weight, for the classes that run.

    `tags_of` gives the tags of each class's task; a class runs when its weight
    is above 0, one of its tags is in `tags` (if given) and none is in
    `exclude_tags`, as locust's --tags and --exclude-tags select tasks. A class
    without a weight option keeps weight 1.
    """
    wanted = set(tags) if tags else None
    unwanted = set(exclude_tags) if exclude_tags else set()
    chosen = {}
    for name, class_tags in tags_of.items():
        weight = weights.get(name, 1)
        if weight <= 0 or class_tags & unwanted:
            continue
        if wanted is not None and not class_tags & wanted:
            continue
        chosen[name] = weight
    return chosen
