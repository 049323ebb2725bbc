"""In-memory candidate index over the provider directory: no full scan per referral.

Providers are bucketed by ``(service_category, network_id)`` and, inside that, by a coarse
latitude/longitude grid (``cell_degrees``). A lookup visits only the grid cells that can hold a
provider within the distance limit (a bounding box of the circle), plus the virtual-capable
providers of the same key when the service allows virtual care; ``route()`` then applies the
exact haversine cut. With 100,000 providers a lookup touches a few hundred entries.

The index is a pure data structure: the service loads it from its table at start and keeps it in
step from ``provider.upserted`` (and from other instances' writes by polling the table).
"""

from __future__ import annotations

from collections import Counter
from math import cos, floor, radians

from .model import ProviderProfile, StageCounts

KM_PER_DEGREE_LAT = 111.2

Key = tuple[str, str]
Cell = tuple[int, int]


class ProviderIndex:
    """Providers by (service, network) and grid cell; see the module docstring."""

    def __init__(self, cell_degrees: float = 0.25) -> None:
        if cell_degrees <= 0:
            raise ValueError("cell_degrees must be positive")
        self.cell_degrees = cell_degrees
        self._profiles: dict[str, ProviderProfile] = {}
        self._cells: dict[Key, dict[Cell, dict[str, ProviderProfile]]] = {}
        self._virtual: dict[Key, dict[str, ProviderProfile]] = {}
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
                if profile.virtual_capable:
                    self._virtual.setdefault(key, {})[profile.npi] = profile

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
                if profile.virtual_capable:
                    self._virtual[key].pop(npi, None)

    def lookup(
        self, service_category: str, network_id: str, latitude: float, longitude: float, radius_km: float,
        include_virtual: bool,
    ) -> tuple[list[ProviderProfile], StageCounts]:
        """Providers of ``service_category`` in ``network_id`` whose grid cell may lie within
        ``radius_km`` (a superset of the circle), plus the key's virtual-capable providers when
        ``include_virtual``; and the counts that explain an empty answer."""
        key = (service_category, network_id)
        counts = StageCounts(offering_service=self._offering[service_category], in_network=self._in_network[key])
        cells = self._cells.get(key)
        if not cells:
            return [], counts
        found: dict[str, ProviderProfile] = {}
        dlat = radius_km / KM_PER_DEGREE_LAT
        lat_lo, lat_hi = max(-90.0, latitude - dlat), min(90.0, latitude + dlat)
        widest = max(abs(lat_lo), abs(lat_hi))
        dlon = 360.0 if widest >= 89.0 else min(360.0, radius_km / (KM_PER_DEGREE_LAT * cos(radians(widest))))
        c = self.cell_degrees
        row_lo, row_hi = floor(lat_lo / c), floor(lat_hi / c)
        col_lo, col_hi = floor((longitude - dlon) / c), floor((longitude + dlon) / c)
        if (row_hi - row_lo + 1) * (col_hi - col_lo + 1) > len(cells):
            # A huge radius: walking the occupied cells is cheaper than the bounding box.
            for (row, col), bucket in cells.items():
                if row_lo <= row <= row_hi and col_lo <= col <= col_hi:
                    found.update(bucket)
        else:
            for row in range(row_lo, row_hi + 1):
                for col in range(col_lo, col_hi + 1):
                    bucket = cells.get((row, col))
                    if bucket:
                        found.update(bucket)
        if include_virtual:
            virtual = self._virtual.get(key)
            if virtual:
                found.update(virtual)
        return list(found.values()), counts
