import pytest

from musicedit.instructions import InstructionError, normalize_instruction

STEMS = ["Drums", "Bass", "Piano", "Guitar"]


@pytest.mark.parametrize(
    ("text", "operation", "stem", "template"),
    [
        ("add drums", "add", "Drums", "Music piece. Instruct: Add Drums."),
        ("Add the drums", "add", "Drums", "Music piece. Instruct: Add Drums."),
        ("  ADD   DRUMS!  ", "add", "Drums", "Music piece. Instruct: Add Drums."),
        ("add drum", "add", "Drums", "Music piece. Instruct: Add Drums."),
        ("Add some piano.", "add", "Piano", "Music piece. Instruct: Add Piano."),
        ("Remove the bass", "remove", "Bass", "Music piece. Instruct: No Bass."),
        ("no bass", "remove", "Bass", "Music piece. Instruct: No Bass."),
        ("without bass", "remove", "Bass", "Music piece. Instruct: No Bass."),
        ("delete bass", "remove", "Bass", "Music piece. Instruct: No Bass."),
        ("remove guitars", "remove", "Guitar", "Music piece. Instruct: No Guitar."),
        ("extract guitar", "extract", "Guitar", "Music piece. Instruct: Only Guitar."),
        ("only piano", "extract", "Piano", "Music piece. Instruct: Only Piano."),
        ("keep just the drums", "extract", "Drums", "Music piece. Instruct: Only Drums."),
        ("isolate drums", "extract", "Drums", "Music piece. Instruct: Only Drums."),
        ("just piano", "extract", "Piano", "Music piece. Instruct: Only Piano."),
        ("Music piece. Instruct: Add Drums.", "add", "Drums", "Music piece. Instruct: Add Drums."),
        ("Music piece. Instruct: No Bass.", "remove", "Bass", "Music piece. Instruct: No Bass."),
        ("music piece. instruct: only piano", "extract", "Piano",
         "Music piece. Instruct: Only Piano."),
        ("add\tdrums\n", "add", "Drums", "Music piece. Instruct: Add Drums."),
        ("drums only", "extract", "Drums", "Music piece. Instruct: Only Drums."),
        ("Guitar only", "extract", "Guitar", "Music piece. Instruct: Only Guitar."),
        ("the bass only!", "extract", "Bass", "Music piece. Instruct: Only Bass."),
        ("please add drums", "add", "Drums", "Music piece. Instruct: Add Drums."),
        ("Please, remove the bass.", "remove", "Bass", "Music piece. Instruct: No Bass."),
        ("add the drums please", "add", "Drums", "Music piece. Instruct: Add Drums."),
        ("Extract the piano, please!", "extract", "Piano", "Music piece. Instruct: Only Piano."),
        ("piano only please", "extract", "Piano", "Music piece. Instruct: Only Piano."),
    ],
)
def test_supported_forms_map_to_the_exact_template(text, operation, stem, template):
    instruction = normalize_instruction(text, STEMS)
    assert (instruction.operation, instruction.stem, instruction.text) == (
        operation, stem, template)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("add violin", "Unsupported instruction"),
        ("make it jazzier", "Unsupported instruction"),
        ("add", "Unsupported instruction"),
        ("drums", "Unsupported instruction"),
        ("add drums and bass", "Unsupported instruction"),
        ("please", "Unsupported instruction"),
        ("please make it jazzier", "Unsupported instruction"),
        ("violin only", "Unsupported instruction"),
        ("only", "Unsupported instruction"),
        ("add drums only", "Unsupported instruction"),  # add or extract? ambiguous
        ("drums please add", "Unsupported instruction"),
        ("x" * 201, "limit is 200"),
        ("a" * 10_000, "limit is 200"),
        ("add\x00drums", "control characters"),
        ("add drums\x1b[31m", "control characters"),
        ("add\u200bdrums", "control characters"),
    ],
)
def test_rejections_explain_what_is_supported(text, fragment):
    with pytest.raises(InstructionError) as info:
        normalize_instruction(text, STEMS)
    message = str(info.value)
    assert fragment in message
    assert "Drums, Bass, Piano, Guitar" in message
    assert "Example: 'Add drums'" in message
    assert isinstance(info.value, ValueError)


def test_stems_come_from_the_caller():
    vocals = normalize_instruction("add vocals", ["Vocals"])
    assert vocals.text == "Music piece. Instruct: Add Vocals."
    with pytest.raises(InstructionError):
        normalize_instruction("add drums", ["Vocals"])
