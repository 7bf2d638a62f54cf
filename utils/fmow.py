"""The fMoW category table and the context-crop rule of the fMoW baseline: constants and pure arithmetic,
no file I/O. A label is an index into ``CATEGORIES``; ``context_box`` is the crop of one bounding box
with its context. The command that crops the fMoW-rgb download into ``train.csv`` / ``test.csv`` with
them is ``scripts/prepare_fmow.py``.
"""

# The 62 fMoW categories in the official order, false_detection removed; a label is an index here.
CATEGORIES = (
    "airport", "airport_hangar", "airport_terminal", "amusement_park", "aquaculture",
    "archaeological_site", "barn", "border_checkpoint", "burial_site", "car_dealership",
    "construction_site", "crop_field", "dam", "debris_or_rubble", "educational_institution",
    "electric_substation", "factory_or_powerplant", "fire_station", "flooded_road", "fountain",
    "gas_station", "golf_course", "ground_transportation_station", "helipad", "hospital",
    "interchange", "lake_or_pond", "lighthouse", "military_facility", "multi-unit_residential",
    "nuclear_powerplant", "office_building", "oil_or_gas_facility", "park", "parking_lot_or_garage",
    "place_of_worship", "police_station", "port", "prison", "race_track", "railway_bridge",
    "recreational_facility", "impoverished_settlement", "road_bridge", "runway", "shipyard",
    "shopping_mall", "single-unit_residential", "smokestack", "solar_farm", "space_facility", "stadium",
    "storage_tank", "surface_mine", "swimming_pool", "toll_booth", "tower", "tunnel_opening",
    "waste_disposal", "water_treatment_facility", "wind_farm", "zoo",
)
LABELS = {name: index for index, name in enumerate(CATEGORIES)}
FALSE_DETECTION = "false_detection"
SPLITS = {"train": "train", "val": "test"}  # fMoW split -> our split
MIN_BOX_SIDE = 3  # boxes of 2 pixels or less a side are skipped


def context_multiplier(ratio: float) -> float:
    """Context added around a box, as a multiple of its side, from side / image side (fMoW baseline)."""
    for upper, multiplier in ((0.1, 2.0), (0.2, 1.0), (0.3, 0.5), (0.4, 0.3), (0.5, 0.2)):
        if ratio < upper:
            return multiplier
    return 0.15


def context_box(box, image_width: int, image_height: int) -> tuple[int, int, int, int] | None:
    """The crop (left, top, right, bottom) of ``box`` = [x, y, width, height] with context: width ×
    multiplier / 2 pixels (truncated to an integer) added on the left and on the right, height likewise
    on top and bottom, then clipped to the image. None for a box of 2 pixels or less a side, or one
    that lies outside the image."""
    x, y, width, height = (int(v) for v in box)
    if width < MIN_BOX_SIDE or height < MIN_BOX_SIDE:
        return None
    pad_x = int(width * context_multiplier(width / image_width) / 2)
    pad_y = int(height * context_multiplier(height / image_height) / 2)
    left, top = max(0, x - pad_x), max(0, y - pad_y)
    right, bottom = min(image_width, x + width + pad_x), min(image_height, y + height + pad_y)
    if right <= left or bottom <= top:
        return None
    return left, top, right, bottom
