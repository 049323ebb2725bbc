"""In-memory candidate index over the provider directory: no full scan per referral.

Providers are bucketed by ``(service_category, network_id)`` and, inside that, by a coarse
latitude/longitude grid (``cell_degrees``). A lookup visits only the grid cells that can hold a
provider within the distance limit (a bounding box of the circle), plus the virtual-capable
providers of the same key when the service allows virtual care; ``route()`` then applies the
exact haversine cut. With 100,000 providers a lookup touches a few hundred entries.

Each cell also keeps, built on first use, its providers as flat rows of the fields routing reads
(``Row``), next to each other in memory; a lookup hands them to ``route()`` along with the
profiles (``Candidates``), which saves it a walk through every profile's sets and dicts.

The index is a pure data structure: the service loads it from its table at start and keeps it in
step from ``provider.upserted`` (and from other instances' writes by polling the table).
"""

from __future__ import annotations

from collections import Counter
from math import asin, cos, degrees, floor, pi, radians, sin, sqrt

from .geo import EARTH_RADIUS_KM
from .model import ProviderProfile, StageCounts

KM_PER_DEGREE_LAT = 111.2

Key = tuple[str, str]
Cell = tuple[int, int]
#: What routing reads of a provider found under a (service, network) key: npi, latitude,
#: longitude, accepting, capacity, virtual_capable, quality_score, cost_index, the tier in that
#: network, and the profile itself.
Row = tuple[str, float, float, bool, int, bool, float, float, str, ProviderProfile]


def row_of(profile: ProviderProfile, tier: str) -> Row:
    """``profile`` as a ``Row``."""
    return (profile.npi, profile.latitude, profile.longitude, profile.accepting, profile.capacity,
            profile.virtual_capable, profile.quality_score, profile.cost_index, tier, profile)


class Candidates(list[ProviderProfile]):
    """What a lookup found: a plain list of profiles to any caller; for ``route()`` also the
    ``rows`` of those of them that are in the network (a tier that is not None), in the same
    order, and the (service, network) ``key`` they were found under: all are active and offer
    that service. Meant to be read, not changed: ``route()`` falls back to the profiles when the
    list no longer has the length it was found with."""

    __slots__ = ("found", "key", "rows")

    def __init__(self, profiles: list[ProviderProfile], key: Key, rows: list[Row]) -> None:
        super().__init__(profiles)
        self.key = key
        self.rows = rows
        self.found = len(profiles)


def _columns_in_reach(
    row: int, cell_degrees: float, latitude: float, longitude: float, radius_km: float, col_lo: int, col_hi: int,
) -> tuple[int, int] | None:
    """The columns ``col_lo..col_hi`` of grid row ``row`` whose cells may hold a point within
    ``radius_km`` of (``latitude``, ``longitude``), or None when no cell of the row can.

    Haversine: sin^2(d/2R) = sin^2(dphi/2) + cos(phi1) cos(phi2) sin^2(dlambda/2). Over the row's
    latitudes, dphi is at least its smallest value and cos(phi2) at least its smallest, so a point
    within the radius has sin^2(dlambda/2) <= (sin^2(r/2R) - sin^2(dphi_min/2)) / (cos(phi1) cos_min).
    Rounding is covered by a margin; near the poles or for huge radii (where longitudes could wrap)
    the row keeps all of ``col_lo..col_hi``.
    """
    reach = radius_km * (1.0 + 1e-6) / (2.0 * EARTH_RADIUS_KM)
    row_south, row_north = row * cell_degrees, (row + 1) * cell_degrees
    highest = max(abs(row_south), abs(row_north), abs(latitude))
    if reach >= pi / 2 or highest >= 89.0 or (col_hi - col_lo) * cell_degrees >= 90.0:
        return col_lo, col_hi
    nearest = row_south - latitude if latitude < row_south else latitude - row_north if latitude > row_north else 0.0
    budget = sin(reach) ** 2 - sin(radians(nearest) / 2) ** 2
    if budget < 0.0:
        return None
    share = budget / (cos(radians(latitude)) * cos(radians(highest)))
    if share >= 1.0:
        return col_lo, col_hi
    half_width = degrees(2.0 * asin(sqrt(share))) * (1.0 + 1e-6) + 1e-9
    return max(col_lo, floor((longitude - half_width) / cell_degrees)), \
        min(col_hi, floor((longitude + half_width) / cell_degrees))


class ProviderIndex:
    """Providers by (service, network) and grid cell; see the module docstring."""

    def __init__(self, cell_degrees: float = 0.25) -> None:
        if cell_degrees <= 0:
            raise ValueError("cell_degrees must be positive")
        self.cell_degrees = cell_degrees
        self._profiles: dict[str, ProviderProfile] = {}
        self._cells: dict[Key, dict[Cell, dict[str, ProviderProfile]]] = {}
        self._virtual: dict[Key, dict[str, ProviderProfile]] = {}
        #: rows of a (key, cell), and a key's virtual-capable providers by grid row (columns,
        #: profiles, rows, rows with a tier), built on first use and dropped when one of theirs changes
        self._rows: dict[tuple[Key, Cell], tuple[list[ProviderProfile], list[Row]]] = {}
        self._virtual_rows: dict[Key, dict[int, tuple[list[int], list[ProviderProfile], list[Row], list[Row]]]] = {}
        self._offering: Counter[str] = Counter()
        self._in_network: Counter[Key] = Counter()

    def __len__(self) -> int:
        return len(self._profiles)

    def __contains__(self, npi: object) -> bool:
        return npi in self._profiles

    def get(self, npi: str) -> ProviderProfile | None:
        """The indexed profile of ``npi`` (active providers only)."""
        return self._profiles.get(npi)

    def _cell(self, latitude: float, longitude: float) -> Cell:
        return floor(latitude / self.cell_degrees), floor(longitude / self.cell_degrees)

    def upsert(self, profile: ProviderProfile) -> None:
        """Replace whatever the index held for ``profile.npi``; inactive providers are dropped."""
        self.remove(profile.npi)
        if not profile.active:
            return
        self._profiles[profile.npi] = profile
        cell = self._cell(profile.latitude, profile.longitude)
        for service in profile.services:
            self._offering[service] += 1
            for network_id in profile.networks:
                key = (service, network_id)
                self._in_network[key] += 1
                self._cells.setdefault(key, {}).setdefault(cell, {})[profile.npi] = profile
                self._rows.pop((key, cell), None)
                if profile.virtual_capable:
                    self._virtual.setdefault(key, {})[profile.npi] = profile
                    self._virtual_rows.pop(key, None)

    def remove(self, npi: str) -> None:
        """Forget ``npi`` (no-op when unknown)."""
        profile = self._profiles.pop(npi, None)
        if profile is None:
            return
        cell = self._cell(profile.latitude, profile.longitude)
        for service in profile.services:
            self._offering[service] -= 1
            for network_id in profile.networks:
                key = (service, network_id)
                self._in_network[key] -= 1
                bucket = self._cells[key][cell]
                bucket.pop(npi, None)
                if not bucket:
                    del self._cells[key][cell]
                self._rows.pop((key, cell), None)
                if profile.virtual_capable:
                    self._virtual[key].pop(npi, None)
                    self._virtual_rows.pop(key, None)

    def _cell_rows(self, key: Key, cell: Cell, bucket: dict[str, ProviderProfile]
                   ) -> tuple[list[ProviderProfile], list[Row]]:
        built = self._rows.get((key, cell))
        if built is None:
            network_id = key[1]
            profiles = list(bucket.values())
            built = self._rows[(key, cell)] = (profiles, [row_of(p, p.networks[network_id]) for p in profiles
                                                          if p.networks[network_id] is not None])
        return built

    def _virtual_by_row(self, key: Key) -> dict[int, tuple[list[int], list[ProviderProfile], list[Row], list[Row]]]:
        by_row = self._virtual_rows.get(key)
        if by_row is None:
            by_row = self._virtual_rows[key] = {}
            network_id = key[1]
            for profile in self._virtual.get(key, {}).values():
                row, col = self._cell(profile.latitude, profile.longitude)
                columns, profiles, rows, in_network = by_row.setdefault(row, ([], [], [], []))
                columns.append(col)
                profiles.append(profile)
                rows.append(row_of(profile, profile.networks[network_id]))
                if rows[-1][8] is not None:
                    in_network.append(rows[-1])
        return by_row

    def lookup(
        self, service_category: str, network_id: str, latitude: float, longitude: float, radius_km: float,
        include_virtual: bool,
    ) -> tuple[Candidates, StageCounts]:
        """Providers of ``service_category`` in ``network_id`` whose grid cell may lie within
        ``radius_km`` (a superset of the circle), plus the key's virtual-capable providers when
        ``include_virtual``; and the counts that explain an empty answer."""
        key = (service_category, network_id)
        counts = StageCounts(offering_service=self._offering[service_category], in_network=self._in_network[key])
        cells = self._cells.get(key)
        if not cells:
            return Candidates([], key, []), counts
        found: list[ProviderProfile] = []
        rows: list[Row] = []
        dlat = radius_km / KM_PER_DEGREE_LAT
        lat_lo, lat_hi = max(-90.0, latitude - dlat), min(90.0, latitude + dlat)
        widest = max(abs(lat_lo), abs(lat_hi))
        dlon = 360.0 if widest >= 89.0 else min(360.0, radius_km / (KM_PER_DEGREE_LAT * cos(radians(widest))))
        c = self.cell_degrees
        row_lo, row_hi = floor(lat_lo / c), floor(lat_hi / c)
        col_lo, col_hi = floor((longitude - dlon) / c), floor((longitude + dlon) / c)
        # A provider sits in one cell of a key, so the cells' lists never overlap.
        visited: dict[int, tuple[int, int]] = {}  # cell row -> the columns visited in it
        if (row_hi - row_lo + 1) * (col_hi - col_lo + 1) > len(cells):
            # A huge radius: walking the occupied cells is cheaper than the bounding box.
            for cell, bucket in cells.items():
                if row_lo <= cell[0] <= row_hi and col_lo <= cell[1] <= col_hi:
                    profiles, cell_rows = self._cell_rows(key, cell, bucket)
                    found += profiles
                    rows += cell_rows
            visited = dict.fromkeys(range(row_lo, row_hi + 1), (col_lo, col_hi))
        else:
            for row in range(row_lo, row_hi + 1):
                span = _columns_in_reach(row, c, latitude, longitude, radius_km, col_lo, col_hi)
                if span is None:
                    continue
                visited[row] = span
                for col in range(span[0], span[1] + 1):
                    occupied = cells.get((row, col))
                    if occupied:
                        profiles, cell_rows = self._cell_rows(key, (row, col), occupied)
                        found += profiles
                        rows += cell_rows
        if include_virtual:  # those not already found in their cell, by grid row
            for row, (columns, profiles, virtual_rows, in_network) in self._virtual_by_row(key).items():
                span = visited.get(row)
                if span is None:
                    found += profiles
                    rows += in_network
                    continue
                for col, profile, virtual_row in zip(columns, profiles, virtual_rows, strict=True):
                    if not span[0] <= col <= span[1]:
                        found.append(profile)
                        if virtual_row[8] is not None:
                            rows.append(virtual_row)
        return Candidates(found, key, rows), counts
